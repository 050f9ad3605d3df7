#!/bin/bash
# Builds static libcryptsetup, libdevmapper and tpm2-tss from Debian source
# packages into $IH_CACHE/static/<key>/prefix, once. Debian ships no .a for
# these three (see shared/docs/static-build.md). Prints the prefix.
#
# No OpenSSL: libcryptsetup uses its nettle backend (hashes, HMAC, PBKDF2)
# with patches/cryptsetup-nettle-xts.patch, which adds user-space AES-XTS so
# keyslots work without AF_ALG (the kernel's user crypto API is a module the
# initrd would need, and build hosts may have none); tpm2-tss uses mbedTLS,
# with patches/tpm2-tss-mbed-ecdh-padding.patch (a salted session failed in
# 1 of 256 without it).
# That takes libcrypto's 3 MiB out of the binary.
set -euo pipefail
here=$(cd "$(dirname "$0")/.." && pwd)
cache=${IH_CACHE:-$here/.cache}

CRYPTSETUP_V=2:2.6.1-4~deb12u2
LVM2_V=2.03.16-2
TSS_V=4.1.3-1.2
key=$(cat "$0" "$here"/scripts/patches/*.patch | sha256sum | cut -c1-16)
top="$cache/static/$key"
prefix="$top/prefix"
if [ -e "$top/done" ]; then echo "$prefix"; exit 0; fi
rm -rf "$top"; mkdir -p "$top/src" "$prefix"
cd "$top/src"
jobs=$(nproc)
# Small code, and sections the final link can drop one function at a time;
# no unwind tables (nothing unwinds: the helper is built with panic=abort
# and its release link discards .eh_frame, see initrd-helper/build.rs).
export CFLAGS="-Os -ffunction-sections -fdata-sections -fno-asynchronous-unwind-tables -fno-unwind-tables"
log() { echo "build-static-libs: $*" >&2; }

fetch_src() { # name version
  apt-get source --download-only -qq "$1=$2" >/dev/null 2>&1
  dpkg-source -x --skip-patches "$(ls "$1"_*.dsc | head -1)" "$1-src" >/dev/null
  # Apply Debian's patches (quilt series) so we build what Debian ships.
  if [ -f "$1-src/debian/patches/series" ]; then
    (cd "$1-src" && while read -r p _; do
       case "$p" in ''|'#'*) continue;; esac
       patch -p1 -s < "debian/patches/$p"; done < debian/patches/series)
  fi
}

log "lvm2 $LVM2_V (libdevmapper only)"
fetch_src lvm2 "$LVM2_V"
( cd lvm2-src
  ./configure --prefix="$prefix" --enable-static_link --enable-pkgconfig \
    --disable-selinux --disable-udev_sync --disable-udev_rules --disable-readline \
    --disable-blkid_wiping --disable-systemd-journal --disable-app-machineid \
    --disable-notify-dbus --disable-nls --with-thin=none --with-cache=none \
    --with-vdo=none --with-writecache=none --with-integrity=none \
    --disable-dmeventd --disable-lvmpolld --disable-use-lvmpolld \
    --disable-use-lvmlockd >/dev/null
  make -j"$jobs" libdm.device-mapper >/dev/null
  make -C libdm install >/dev/null
  install -D -m644 libdm/libdevmapper.h "$prefix/include/libdevmapper.h" )
rm -f "$prefix"/lib/libdevmapper.so*

export PKG_CONFIG_PATH="$prefix/lib/pkgconfig"
export CPPFLAGS="-I$prefix/include" LDFLAGS="-L$prefix/lib"
log "cryptsetup $CRYPTSETUP_V"
fetch_src cryptsetup "$CRYPTSETUP_V"
( cd cryptsetup-src
  patch -p1 -s < "$here/scripts/patches/cryptsetup-nettle-xts.patch"
  ./autogen.sh >/dev/null 2>&1
  ./configure --prefix="$prefix" --disable-shared --enable-static \
    --disable-asciidoc --disable-nls --disable-ssh-token --disable-external-tokens \
    --disable-cryptsetup --disable-veritysetup --disable-integritysetup \
    --disable-selinux --disable-udev --disable-pwquality \
    --with-crypto_backend=nettle --enable-libargon2 --enable-blkid >/dev/null
  make -j"$jobs" libcryptsetup.la >/dev/null
  make install-libLTLIBRARIES install-includeHEADERS install-pkgconfigDATA >/dev/null )

log "tpm2-tss $TSS_V"
fetch_src tpm2-tss "$TSS_V"
( cd tpm2-tss-src
  patch -p1 -s < "$here/scripts/patches/tpm2-tss-mbed-ecdh-padding.patch"
  ./bootstrap >/dev/null 2>&1 || autoreconf -fi >/dev/null 2>&1
  ./configure --prefix="$prefix" --disable-shared --enable-static --enable-nodl \
    --disable-fapi --disable-policy --with-crypto=mbed \
    --enable-tcti-device --enable-tcti-swtpm --disable-tcti-mssim \
    --disable-tcti-pcap --disable-tcti-libtpms --disable-tcti-cmd \
    --disable-tcti-spi-helper --disable-tcti-spi-ltt2go --disable-tcti-spidev \
    --disable-tcti-i2c-helper --disable-tcti-i2c-ftdi --disable-tcti-spi-ftdi \
    --disable-unit --disable-integration --disable-doxygen-doc \
    --disable-defaultflags --disable-log-file >/dev/null
  make -j"$jobs" >/dev/null
  make install-libLTLIBRARIES install-nobase_includeHEADERS install-pkgconfigDATA >/dev/null 2>&1 \
    || make install-exec-am install-pkgconfigDATA install-data-am >/dev/null 2>&1 || true )
rm -f "$prefix"/lib/*.so* "$prefix"/lib/*.la

# nodl + static was never finished upstream: the .pc files do not pull in the
# TCTIs, and every TCTI archive defines the same global Tss2_Tcti_Info.
for pc in tss2-esys tss2-tctildr; do
  sed -i 's/^Requires.private:\(.*\)$/Requires.private:\1 tss2-tcti-device tss2-tcti-swtpm/' \
    "$prefix/lib/pkgconfig/$pc.pc"
  grep -q '^Requires.private:' "$prefix/lib/pkgconfig/$pc.pc" ||
    echo 'Requires.private: tss2-tcti-device tss2-tcti-swtpm' >> "$prefix/lib/pkgconfig/$pc.pc"
done
for a in "$prefix"/lib/libtss2-tcti-*.a; do
  objcopy --localize-symbol=Tss2_Tcti_Info "$a"
done
touch "$top/done"
echo "$prefix"
