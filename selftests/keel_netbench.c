// SPDX-License-Identifier: GPL-2.0
/*
 * keel_netbench: one TCP transfer of scripts/bench-net, the same program at both ends (Dom0,
 * a network namespace of Dom0, a DomU). Static, no libc beyond what the initramfs needs.
 *
 * usage: keel_netbench server [--send|--recv] [--port P] [--mib N] [--ready TEXT] [--timeout S]
 *                             [--verify]
 *        keel_netbench client [--send|--recv] --host ADDR [--port P] [--mib N] [--timeout S]
 *                             [--verify]
 *   server   listens on PORT (every IPv4 address) and accepts one connection; receives
 *            (--recv, its default) or sends (--send) over it; prints TEXT and a newline on
 *            stderr once it listens (--ready: a sign for whoever connects)
 *   client   connects to ADDR:PORT, retrying while it is refused (the server may not listen
 *            yet); sends (--send, its default) or receives (--recv)
 *   --mib N  the transfer's size in MiB (default 16); --port P (default 5201); --timeout S:
 *            gives up after S seconds (default 900)
 *   --verify the sender sends a pseudo-random stream that is a function of the byte's offset
 *            (each 8-byte word a hash of its index), the receiver checks every byte of it,
 *            answers one byte `K` when all were right and adds `verify=ok` to its line, or
 *            fails naming the first offset that differs (a byte lost, duplicated, reordered or
 *            changed); the sender adds `verify=ok` only with the receiver's `K`; both sides
 *            must say it
 * The sender writes N MiB in 128 KiB writes, shuts its side down and waits for the receiver
 * to close (so its time ends when the last byte has arrived); the receiver reads in 128 KiB
 * reads until the end of the stream and closes. Socket buffers are left to the kernel's
 * defaults. Each side prints one line: its time from its first byte to its last (with
 * CLOCK_MONOTONIC), the CPU time it used meanwhile (getrusage, user + system), and the share of
 * the machine's CPU time (all its CPUs, /proc/stat) that was busy and that went to softirqs:
 *   netbench send|recv bytes=B ns=T mibps=M cpu-us=C busy=P% softirq=Q%
 * Exit status: 0; 1 with a message when a system call fails, the timeout passes or the
 * receiver gets other than N MiB; 2 for bad arguments.
 */
#include <arpa/inet.h>
#include <errno.h>
#include <netinet/in.h>
#include <signal.h>
#include <stdint.h>
#include <stdio.h>
#include <stdlib.h>
#include <string.h>
#include <sys/resource.h>
#include <sys/socket.h>
#include <time.h>
#include <unistd.h>

#define MIB (1024 * 1024)
#define CHUNK (128 * 1024)

static uint64_t now_ns(void)
{
	struct timespec ts;

	clock_gettime(CLOCK_MONOTONIC, &ts);
	return (uint64_t)ts.tv_sec * 1000000000 + ts.tv_nsec;
}

static uint64_t cpu_us(void)
{
	struct rusage ru;

	getrusage(RUSAGE_SELF, &ru);
	return (uint64_t)(ru.ru_utime.tv_sec + ru.ru_stime.tv_sec) * 1000000 + ru.ru_utime.tv_usec +
	       ru.ru_stime.tv_usec;
}

/*
 * The machine's CPU time so far (/proc/stat's first line, in ticks): all of it, the part not
 * idle, the part in softirqs. Zeros when it cannot be read.
 */
struct cpu_time {
	unsigned long long total, busy, softirq;
};

static struct cpu_time machine_cpu(void)
{
	unsigned long long v[8] = { 0 };
	struct cpu_time t = { 0 };
	FILE *f = fopen("/proc/stat", "r");

	if (!f)
		return t;
	if (fscanf(f, "cpu %llu %llu %llu %llu %llu %llu %llu %llu", &v[0], &v[1], &v[2], &v[3],
		   &v[4], &v[5], &v[6], &v[7]) == 8) {
		for (int i = 0; i < 8; i++)
			t.total += v[i];
		t.busy = t.total - v[3] - v[4];
		t.softirq = v[6];
	}
	fclose(f);
	return t;
}

/* The stream --verify sends: word i of the stream is a hash of i (splitmix64's finalizer). */
static uint64_t stream_word(uint64_t i)
{
	uint64_t z = i + 0x9e3779b97f4a7c15ull;

	z = (z ^ (z >> 30)) * 0xbf58476d1ce4e5b9ull;
	z = (z ^ (z >> 27)) * 0x94d049bb133111ebull;
	return z ^ (z >> 31);
}

/* The stream's byte at offset off (little-endian words). */
static unsigned char stream_byte(uint64_t off, uint64_t *word, uint64_t *word_index)
{
	if (*word_index != off >> 3) {
		*word_index = off >> 3;
		*word = stream_word(*word_index);
	}
	return (unsigned char)(*word >> ((off & 7) * 8));
}

static int verify;

static int fail(const char *what)
{
	fprintf(stderr, "keel_netbench: %s: %s\n", what, strerror(errno));
	return 1;
}

static void report(const char *dir, uint64_t bytes, uint64_t ns, uint64_t cpu,
		   struct cpu_time m0)
{
	struct cpu_time m1 = machine_cpu();
	unsigned long long centi, total = m1.total - m0.total;

	if (!ns)
		ns = 1;
	if (!total)
		total = 1;
	/* MiB/s with two decimals: bytes * 1e9 / ns / MiB. */
	centi = (unsigned long long)((double)bytes * 1e11 / (double)ns / MIB);
	printf("netbench %s bytes=%llu ns=%llu mibps=%llu.%02llu cpu-us=%llu busy=%llu%% "
	       "softirq=%llu%%%s\n",
	       dir, (unsigned long long)bytes, (unsigned long long)ns, centi / 100, centi % 100,
	       (unsigned long long)cpu, (m1.busy - m0.busy) * 100 / total,
	       (m1.softirq - m0.softirq) * 100 / total, verify ? " verify=ok" : "");
	fflush(stdout);
}

/* Sends total bytes, then waits for the receiver's end of stream. */
static int do_send(int fd, uint64_t total, char *buf)
{
	uint64_t sent = 0, t0, c0, word = 0, word_index = UINT64_MAX;
	struct cpu_time m0;
	char c;
	ssize_t n;

	m0 = machine_cpu();
	c0 = cpu_us();
	t0 = now_ns();
	while (sent < total) {
		size_t len = total - sent < CHUNK ? (size_t)(total - sent) : CHUNK;

		/* A short write leaves the rest to the next: the chunk starts where it stopped. */
		for (size_t k = 0; verify && k < len; k++)
			buf[k] = (char)stream_byte(sent + k, &word, &word_index);

		n = write(fd, buf, len);
		if (n < 0 && errno == EINTR)
			continue;
		if (n <= 0)
			return fail("send");
		sent += (uint64_t)n;
	}
	if (shutdown(fd, SHUT_WR))
		return fail("shutdown");
	do
		n = read(fd, &c, 1);
	while (n < 0 && errno == EINTR);
	if (n < 0)
		return fail("waiting for the receiver");
	if (verify && (n != 1 || c != 'K')) {
		fprintf(stderr, "keel_netbench: the receiver did not confirm the stream\n");
		return 1;
	}
	report("send", sent, now_ns() - t0, cpu_us() - c0, m0);
	return 0;
}

/* Receives until the end of the stream; it must be total bytes. */
static int do_recv(int fd, uint64_t total, char *buf)
{
	uint64_t got = 0, t0 = 0, t1 = 0, c0 = 0, word = 0, word_index = UINT64_MAX;
	struct cpu_time m0 = { 0 };
	ssize_t n;

	for (;;) {
		n = read(fd, buf, CHUNK);
		if (n < 0 && errno == EINTR)
			continue;
		if (n < 0)
			return fail("receive");
		if (!n)
			break;
		if (!got) {
			t0 = now_ns();
			c0 = cpu_us();
			m0 = machine_cpu();
		}
		for (ssize_t k = 0; verify && k < n; k++) {
			if ((unsigned char)buf[k] != stream_byte(got + k, &word, &word_index)) {
				fprintf(stderr, "keel_netbench: the stream differs at byte %llu\n",
					(unsigned long long)(got + k));
				return 1;
			}
		}
		got += (uint64_t)n;
		t1 = now_ns();
	}
	if (got != total) {
		fprintf(stderr, "keel_netbench: received %llu bytes, not %llu\n",
			(unsigned long long)got, (unsigned long long)total);
		return 1;
	}
	/* Every byte was right: the sender hears it before the end of the stream. */
	if (verify && write(fd, "K", 1) != 1)
		return fail("confirming the stream");
	close(fd);
	report("recv", got, t1 - t0, cpu_us() - c0, m0);
	return 0;
}

static void timed_out(int sig)
{
	static const char msg[] = "keel_netbench: timed out\n";
	ssize_t n = write(2, msg, sizeof(msg) - 1);

	(void)sig;
	(void)n;
	_exit(1);
}

static int usage(void)
{
	fprintf(stderr, "usage: keel_netbench server [--send|--recv] [--port P] [--mib N] "
			"[--ready TEXT] [--timeout S] [--verify]\n"
			"       keel_netbench client [--send|--recv] --host ADDR [--port P] "
			"[--mib N] [--timeout S] [--verify]\n");
	return 2;
}

int main(int argc, char **argv)
{
	unsigned long mib = 16, port = 5201, timeout = 900;
	const char *host = NULL, *ready = NULL;
	struct sockaddr_in sa = { .sin_family = AF_INET };
	int server, send_side, fd, one = 1;
	uint64_t deadline;
	char *buf;

	if (argc < 2)
		return usage();
	if (!strcmp(argv[1], "server"))
		server = 1;
	else if (!strcmp(argv[1], "client"))
		server = 0;
	else
		return usage();
	send_side = !server;
	for (int i = 2; i < argc; i++) {
		if (!strcmp(argv[i], "--send"))
			send_side = 1;
		else if (!strcmp(argv[i], "--recv"))
			send_side = 0;
		else if (!strcmp(argv[i], "--port") && i + 1 < argc)
			port = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--mib") && i + 1 < argc)
			mib = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--timeout") && i + 1 < argc)
			timeout = strtoul(argv[++i], NULL, 0);
		else if (!strcmp(argv[i], "--host") && i + 1 < argc)
			host = argv[++i];
		else if (!strcmp(argv[i], "--ready") && i + 1 < argc)
			ready = argv[++i];
		else if (!strcmp(argv[i], "--verify"))
			verify = 1;
		else
			return usage();
	}
	if (!mib || mib > 65536 || !port || port > 65535 || !timeout || server == !!host) {
		fprintf(stderr, "keel_netbench: a size of 1 to 65536 MiB, a port, a timeout; "
				"--host for a client only\n");
		return 2;
	}
	sa.sin_port = htons((uint16_t)port);
	if (host && inet_pton(AF_INET, host, &sa.sin_addr) != 1) {
		fprintf(stderr, "keel_netbench: '%s' is not an IPv4 address\n", host);
		return 2;
	}
	signal(SIGALRM, timed_out);
	alarm((unsigned int)timeout);
	signal(SIGPIPE, SIG_IGN);
	buf = malloc(CHUNK);
	if (!buf)
		return fail("memory");
	for (size_t i = 0; i < CHUNK; i++)
		buf[i] = (char)(i * 131 + 7);

	if (server) {
		int ls = socket(AF_INET, SOCK_STREAM, 0);

		if (ls < 0)
			return fail("socket");
		setsockopt(ls, SOL_SOCKET, SO_REUSEADDR, &one, sizeof(one));
		sa.sin_addr.s_addr = htonl(INADDR_ANY);
		if (bind(ls, (struct sockaddr *)&sa, sizeof(sa)) || listen(ls, 1))
			return fail("bind and listen");
		if (ready) {
			fprintf(stderr, "%s\n", ready);
			fflush(stderr);
		}
		do
			fd = accept(ls, NULL, NULL);
		while (fd < 0 && errno == EINTR);
		if (fd < 0)
			return fail("accept");
		close(ls);
	} else {
		deadline = now_ns() + (uint64_t)timeout * 1000000000;
		for (;;) {
			fd = socket(AF_INET, SOCK_STREAM, 0);
			if (fd < 0)
				return fail("socket");
			if (!connect(fd, (struct sockaddr *)&sa, sizeof(sa)))
				break;
			if ((errno != ECONNREFUSED && errno != EINTR) || now_ns() > deadline)
				return fail("connect");
			close(fd);
			usleep(100000);
		}
	}
	return send_side ? do_send(fd, (uint64_t)mib * MIB, buf) : do_recv(fd, (uint64_t)mib * MIB, buf);
}
