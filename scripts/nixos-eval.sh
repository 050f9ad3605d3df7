#!/bin/bash
# make nixos-eval (part of make test): evaluates the NixOS module
# (dracut-like-modules/nixos/module.nix) with Debian's nix (nix-bin) and the
# pinned nixpkgs lib (../shared/vendor/nixpkgs-lib.tar.gz, or
# IH_NIXPKGS_LIB_TARBALL) over a stub of the NixOS options it sets, then
# checks what it renders:
#   - no assertion fails for a verity-store appliance config;
#   - the rendered config.toml is accepted by the helper itself (plan --config
#     against the VM disk image);
#   - the initrd unit has the ordering and failure handling of
#     units/initrd-helper.service;
#   - each replaced mechanism (repart, etc overlay, dm-verity generator, no
#     systemd initrd, an unknown key, another /var) is refused with its message.
# Usage: nixos-eval.sh HELPER_BINARY VM_DIR. Prints "test nixos_module_eval ... ok".
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
bin=$1 vm=$2
tarball=${IH_NIXPKGS_LIB_TARBALL:-$here/../shared/vendor/nixpkgs-lib.tar.gz}
[ -r "$tarball" ] || { echo "nixos-eval: $tarball is missing" >&2; exit 1; }
work=$(mktemp -d)
trap 'rm -rf "$work"' EXIT
tar -xzf "$tarball" -C "$work"
[ -e "$work/lib/default.nix" ] || { echo "nixos-eval: no lib/default.nix in $tarball" >&2; exit 1; }
export NIX_CONFIG='build-users-group ='
nix-instantiate --eval --strict --json --arg lib "import $work/lib" \
  "$here/dracut-like-modules/nixos/eval.nix" > "$work/out.json"
python3 - "$work/out.json" "$here/units/initrd-helper.service" "$bin" "$vm" "$work" <<'PY'
import json, subprocess, sys
out_path, unit_path, binary, vm, work = sys.argv[1:]
r = json.load(open(out_path))
errors = []
def check(cond, what):
    if not cond:
        errors.append(what)

check(r["failed"] == [], f"assertions fail for a good config: {r['failed']}")
check(r["disabled_sets_nothing"], "enable = false still defines the unit")

# The rendered config.toml, parsed by the helper's own parser and planned.
cfg = f"{work}/config.toml"
open(cfg, "w").write(r["config_toml"])
check('pcrs = [7]' in r["config_toml"] and '"-L", "data"' in r["config_toml"],
      f"config.toml lacks the settings: {r['config_toml']!r}")
roothash = open(f"{vm}/roothash-a").read().strip()
p = subprocess.run([binary, "plan", "--config", cfg, "--disk", f"{vm}/disk.img",
                    "--cmdline", f"roothash={roothash}"], capture_output=True, text=True)
check(p.returncode == 0 and "sealed to TPM2 PCRs [7]" in p.stdout,
      f"the helper does not accept the rendered config.toml: {p.stdout}{p.stderr}")

# The unit against units/initrd-helper.service (dracut's).
unit = {}
for line in open(unit_path):
    line = line.strip()
    if line and not line.startswith(("#", "[")) and "=" in line:
        k, v = line.split("=", 1)
        unit.setdefault(k, []).extend(v.split())
def words(k):
    return sorted(unit.get(k, []))
check(sorted(r["after"]) == words("After"), f"After= {r['after']} != {words('After')}")
check(sorted(r["before"]) == words("Before"), f"Before= {r['before']} != {words('Before')}")
check(r["required_by"] == ["initrd-root-fs.target"], f"requiredBy {r['required_by']}")
uc = r["unit_config"]
for k in ["ConditionPathExists", "OnFailure", "OnFailureJobMode"]:
    check([str(uc.get(k))] == unit[k], f"{k}: {uc.get(k)} != {unit[k]}")
check(uc.get("DefaultDependencies") is False and unit["DefaultDependencies"] == ["no"],
      "DefaultDependencies")
check(r["service_type"] == unit["Type"][0], "Type=")
check(r["exec_start"].endswith("/bin/initrd-helper run") and unit["ExecStart"][-1] == "run",
      f"ExecStart= {r['exec_start']}")
check(any(s.endswith("/bin/initrd-helper") for s in r["store_paths"]), "binary not in the initrd")
check(any("e2fsprogs" in s for s in r["initrd_bin"]), "mkfs.ext4 not in the initrd")
check({"dm_verity", "dm_crypt", "overlay", "tpm_crb"} <= set(r["modules"]), "kernel modules")
check(r["root_fs"]["options"] == ["ro"] and r["root_fs"]["device"] == "/dev/mapper/root",
      f"fileSystems./ {r['root_fs']}")
check(not r["has_usr_fs"], "the slot layout defines fileSystems./usr")
# The tmpfs layout: / a tmpfs, /usr the usrhash= slot, and the helper plans
# the rendered config against the VM tests' hermetic-/usr image.
t = r["tmpfs"]
check(t["failed"] == [], f"assertions fail for the tmpfs layout: {t['failed']}")
check(t["root_fs"]["fsType"] == "tmpfs" and t["usr_fs"]["device"] == "/dev/mapper/usr"
      and t["usr_fs"]["options"] == ["ro"], f"tmpfs layout: {t['root_fs']} {t['usr_fs']}")
open(cfg, "w").write(t["config_toml"])
usrhash = open(f"{vm}/usr-disk.img.usrhash-a").read().strip()
p = subprocess.run([binary, "plan", "--config", cfg, "--disk", f"{vm}/usr-disk.img",
                    "--cmdline", f"usrhash={usrhash}"], capture_output=True, text=True)
check(p.returncode == 0 and "tmpfs-root" in p.stdout and "/dev/mapper/usr" in p.stdout,
      f"the helper does not plan the rendered tmpfs config.toml: {p.stdout}{p.stderr}")

# What it replaces is refused, each with one message naming the option.
needles = {"repart": "boot.initrd.systemd.repart", "etc_overlay": "system.etc.overlay",
           "dm_verity": "boot.initrd.systemd.dmVerity", "no_systemd_initrd": "boot.initrd.systemd.enable",
           "unknown_key": "data.colour", "var_elsewhere": 'fileSystems."/var"'}
for case, needle in needles.items():
    msgs = r["refused"][case]
    check(len(msgs) == 1 and needle in msgs[0], f"{case}: {msgs}")

if errors:
    print("nixos-eval: the module's output:", json.dumps(r, indent=1), sep="\n")
    for e in errors:
        print("nixos-eval: FAILED:", e)
    print("test nixos_module_eval ... FAILED")
    sys.exit(1)
print(f"nixos-eval: {len(needles)} refusals, the unit, the initrd contents and config.toml checked")
print("test nixos_module_eval ... ok")
PY
