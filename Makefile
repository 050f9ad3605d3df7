# The two commands: `make demo` and `make test` (see README.md).
SHELL := /bin/bash
.SHELLFLAGS := -euo pipefail -c
export IH_CACHE ?= $(CURDIR)/.cache
CARGO := scripts/cargo-static
BIN := target/x86_64-unknown-linux-gnu/release/initrd-helper
VM_DIR = $(IH_CACHE)/vm/current
VIRT_FW_VARS = $(wildcard $(IH_CACHE)/venv-*/bin/virt-fw-vars)

.PHONY: all deps static build lint unit images check-static nixos-eval vm test demo bench fuzz clean

all: build

deps:
	@scripts/install-deps.sh

static: deps
	@scripts/build-static-libs.sh >/dev/null

build: static
	$(CARGO) build --release --locked -p initrd-helper

lint: static
	cargo fmt --all --check
	$(CARGO) clippy --locked --workspace --all-targets -- -D warnings

unit: static
	$(CARGO) test --locked -p initrd-helper --lib --bins
	$(CARGO) test --locked -p vm-tests --lib --bins

images: build
	vm-tests/build-image.sh $(BIN) >/dev/null

check-static: images
	scripts/check-static.sh $(BIN) $(VM_DIR)/disk.img

# The NixOS module, evaluated by Debian's nix with the pinned nixpkgs lib.
nixos-eval: images
	scripts/nixos-eval.sh $(CURDIR)/$(BIN) $(VM_DIR)

vm: images
	IH_VM_DIR=$(VM_DIR) IH_HELPER_BIN=$(CURDIR)/$(BIN) IH_VIRT_FW_VARS=$(VIRT_FW_VARS) $(CARGO) test --locked -p vm-tests --tests -- --ignored --test-threads=1

# Everything CI runs: lint, unit tests, the static-binary check, VM scenarios.
# Ends with one "N passed, N failed" line counted over every test run.
test: deps
	@start=$$(date +%s); log=$$(mktemp); \
	status=0; $(MAKE) --no-print-directory lint unit check-static nixos-eval vm 2>&1 | tee "$$log" || status=$$?; \
	passed=$$(grep -cE '^test .* \.\.\. .*ok$$' "$$log" || true); \
	failed=$$(grep -cE '^test .* \.\.\. .*FAILED$$' "$$log" || true); \
	[ "$$status" = 0 ] || failed=$$((failed > 0 ? failed : 1)); \
	echo "make test: finished in $$(( $$(date +%s) - start )) s"; \
	echo "summary: $$passed passed, $$failed failed"; rm -f "$$log"; exit $$status

# Boots the demo appliance; INTERACTIVE=1 gives a root shell on the console.
demo: images
	IH_VM_DIR=$(VM_DIR) $(CARGO) run --locked -q -p vm-tests --bin demo

bench: images
	vm-tests/build-baseline.sh
	IH_VM_DIR=$(VM_DIR) $(CARGO) run --locked -q --release -p vm-tests --bin bench

# Every cargo-fuzz target for IH_FUZZ_SECS (default 60) seconds; prints
# executions and crashes per target (make test replays the committed corpus).
fuzz: static
	@scripts/fuzz.sh

clean:
	rm -rf target $(IH_CACHE)
