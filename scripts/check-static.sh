#!/bin/bash
# Proves the helper is a fully static binary: `file` says so, and running it
# (planning against the VM disk image, with a TPM reached through swtpm so
# tss-esapi and tpm2-tss are exercised) opens no shared object.
set -euo pipefail
bin=$1 disk=$2
file -L "$bin" | grep -q 'statically linked' || { file -L "$bin"; echo "check-static: not statically linked" >&2; exit 1; }
dir=$(mktemp -d); trap 'kill $swtpm 2>/dev/null; rm -rf "$dir"' EXIT
# tss-esapi's swtpm TCTI speaks TCP only: a free loopback port pair.
port=$(python3 -c 'import socket; s=socket.socket(); s.bind(("127.0.0.1",0)); print(s.getsockname()[1])')
swtpm socket --tpm2 --flags not-need-init,startup-clear --tpmstate dir="$dir" \
  --server type=tcp,bindaddr=127.0.0.1,port="$port" --ctrl type=tcp,bindaddr=127.0.0.1,port=$((port + 1)) &
swtpm=$!
for _ in $(seq 50); do (exec 3<>/dev/tcp/127.0.0.1/"$port") 2>/dev/null && break; sleep 0.1; done
INITRD_HELPER_TCTI="swtpm:host=127.0.0.1,port=$port" strace -f -e trace=openat,open -o "$dir/trace" \
  "$bin" plan --json --disk "$disk" \
  --config "$(dirname "$0")/../vm-tests/config/initrd-helper.toml" --cmdline "" > "$dir/plan.json"
grep -q '"manufacturer": "IBM"' "$dir/plan.json" || { cat "$dir/plan.json"; echo "check-static: TPM not reached" >&2; exit 1; }
# Even a failed attempt counts: on another host that file may exist.
if grep -E '\.so(\.[0-9]+)*"' "$dir/trace"; then
  echo "check-static: the binary opened or tried to open shared objects (above)" >&2; exit 1
fi
size=$(stat -c %s "$bin")
echo "check-static: ok: statically linked, no shared object opened, stripped size $size bytes ($(( size / 1024 )) KiB)"
