# SPDX-License-Identifier: GPL-2.0
# Keel's build. `make` builds the module (against KDIR), keelctl and the selftests;
# `make check` runs every test (scripts/test). The test kernel comes from scripts/build-kernel,
# which caches it outside the repository.
KEEL_CACHE ?= $(HOME)/.cache/keel
KVARIANT ?= keel
KDIR ?= $(KEEL_CACHE)/kernel/$(KVARIANT)/build
KSRC ?= $(KEEL_CACHE)/kernel/$(KVARIANT)/src
export PATH := /usr/lib/llvm-19/bin:$(HOME)/.cargo/bin:$(PATH)

# keelctl runs in the test VM's initramfs, which has no libc: link it statically. An explicit
# --target keeps these flags off build scripts and proc macros, and in a target dir of its own.
HOST_TARGET := x86_64-unknown-linux-gnu
KEELCTL := target/$(HOST_TARGET)/release/keelctl
# `make install`: keelctl, keel-domd and keel-xenstored into $(DESTDIR)$(SBINDIR) (side by
# side: each finds the next beside itself), and keel-xenstored's systemd unit into
# $(DESTDIR)$(UNITDIR).
PREFIX ?= /usr/local
SBINDIR ?= $(PREFIX)/sbin
UNITDIR ?= /etc/systemd/system

all: module tool selftests

kernel:
	scripts/build-kernel

module:
	@test -e $(KDIR)/Makefile || { echo "no kernel build at $(KDIR): run scripts/build-kernel (or set KDIR)"; exit 1; }
	$(MAKE) -C $(KDIR) M=$(CURDIR) LLVM=1 modules

# The module again under the kernel's Rust lints and clippy; fails on any warning.
module-lint:
	@test -e $(KDIR)/Makefile || { echo "no kernel build at $(KDIR): run scripts/build-kernel (or set KDIR)"; exit 1; }
	$(MAKE) -C $(KDIR) M=$(CURDIR) LLVM=1 clean >/dev/null
	$(MAKE) -C $(KDIR) M=$(CURDIR) LLVM=1 CLIPPY=1 modules 2>&1 | tee module/lint.log
	@! grep -E "^(warning|error)|warning: objtool" module/lint.log

# Removes the module's build products only (before building it against another kernel).
module-clean:
	-$(MAKE) -C $(KDIR) M=$(CURDIR) LLVM=1 clean

tool:
	RUSTFLAGS="-C target-feature=+crt-static" cargo build --release --locked --target $(HOST_TARGET) -p keelctl -p keel-domd -p keel-xenstored

selftests:
	$(MAKE) -C selftests KSRC=$(KSRC)

install: tool
	install -D -m 755 -t $(DESTDIR)$(SBINDIR) target/$(HOST_TARGET)/release/keelctl \
		target/$(HOST_TARGET)/release/keel-domd target/$(HOST_TARGET)/release/keel-xenstored
	install -d $(DESTDIR)$(UNITDIR)
	sed 's|@SBINDIR@|$(SBINDIR)|' tools/keel-xenstored/keel-xenstored.service \
		>$(DESTDIR)$(UNITDIR)/keel-xenstored.service
	chmod 644 $(DESTDIR)$(UNITDIR)/keel-xenstored.service

check:
	scripts/test

clean:
	-$(MAKE) -C $(KDIR) M=$(CURDIR) LLVM=1 clean
	$(MAKE) -C selftests clean
	cargo clean

.PHONY: all kernel module module-clean module-lint tool selftests install check clean
