#!/bin/sh
# Lays out the mkosi drop-in for initrd-helper in DIR: mkosi.conf, and
# mkosi.extra/ holding the static binary, the initrd unit (required by
# initrd-root-fs.target, as the dracut module does), config.toml, and a
# masked systemd-veritysetup-generator (the helper owns roothash=/usrhash=;
# the generator would open the same verity devices).
# Usage: install.sh DIR BINARY [CONFIG]
set -eu
[ $# -ge 2 ] || { echo "usage: $0 DIR BINARY [CONFIG]" >&2; exit 2; }
dir=$1 bin=$2 conf=${3:-}
here=$(cd "$(dirname "$0")" && pwd)
units="$here/../../units"
extra="$dir/mkosi.extra"
install -D -m644 "$here/mkosi.conf" "$dir/mkosi.conf"
install -D -m755 "$bin" "$extra/usr/bin/initrd-helper"
install -D -m644 "$units/initrd-helper.service" "$extra/usr/lib/systemd/system/initrd-helper.service"
mkdir -p "$extra/usr/lib/systemd/system/initrd-root-fs.target.requires"
ln -sf ../initrd-helper.service "$extra/usr/lib/systemd/system/initrd-root-fs.target.requires/initrd-helper.service"
mkdir -p "$extra/etc/systemd/system-generators"
ln -sf /dev/null "$extra/etc/systemd/system-generators/systemd-veritysetup-generator"
if [ -n "$conf" ]; then
  install -D -m644 "$conf" "$extra/etc/initrd-helper/config.toml"
fi
