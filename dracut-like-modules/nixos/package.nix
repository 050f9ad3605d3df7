# The static initrd-helper binary for NixOS (pkgsStatic: musl, static
# libcryptsetup, tpm2-tss, libblkid). Written for nixpkgs; never built on
# these machines (no nixpkgs here): scripts/cargo-static is what `make`
# builds and tests. Evaluated only as the module's default (lazily).
{ lib, pkgsStatic }:

pkgsStatic.rustPlatform.buildRustPackage {
  pname = "initrd-helper";
  version = "0.1.0";
  src = lib.cleanSource ../..;
  cargoLock.lockFile = ../../Cargo.lock;
  cargoBuildFlags = [ "-p" "initrd-helper" ];
  nativeBuildInputs = [ pkgsStatic.buildPackages.pkg-config pkgsStatic.buildPackages.rustPlatform.bindgenHook ];
  buildInputs = with pkgsStatic; [ cryptsetup tpm2-tss util-linux lvm2 json-c openssl popt ];
  # The unit tests need swtpm and cryptsetup on the build host; make test runs them.
  doCheck = false;
  meta = {
    description = "Stage-1 helper for immutable appliance images: verity A/B root, LUKS2+TPM2 data partition, /etc overlay, machine-id";
    license = [ lib.licenses.mit lib.licenses.asl20 ];
    mainProgram = "initrd-helper";
    platforms = [ "x86_64-linux" ];
  };
}
