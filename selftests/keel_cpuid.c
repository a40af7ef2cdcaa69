// SPDX-License-Identifier: GPL-2.0
/*
 * keel_cpuid: prints, for every online CPU, whether Keel's CPUID leaf is there
 * ("cpu N keel" or "cpu N none"). Exit status: 0 if every CPU has it, 1 if none has it,
 * 2 if some have it and some do not. A helper of the shell selftests.
 */
#include <cpuid.h>
#include <sched.h>
#include <stdio.h>
#include <string.h>
#include <unistd.h>

int main(void)
{
	int with = 0, without = 0;

	for (int cpu = 0; cpu < sysconf(_SC_NPROCESSORS_CONF); cpu++) {
		unsigned int a, b, c, d;
		cpu_set_t set;
		char sig[13] = { 0 };

		CPU_ZERO(&set);
		CPU_SET(cpu, &set);
		if (sched_setaffinity(0, sizeof(set), &set))
			continue;
		__cpuid_count(0x40000000, 0, a, b, c, d);
		memcpy(sig, &b, 4);
		memcpy(sig + 4, &c, 4);
		memcpy(sig + 8, &d, 4);
		if (!strcmp(sig, "KeelKeelKeel")) {
			with++;
			printf("cpu %d keel\n", cpu);
		} else {
			without++;
			printf("cpu %d none\n", cpu);
		}
	}
	return without == 0 ? 0 : with == 0 ? 1 : 2;
}
