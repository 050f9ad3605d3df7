# Declarations of exactly the NixOS options module.nix reads or sets, with
# NixOS's types, so lib.evalModules can evaluate the module without the
# rest of nixpkgs (scripts/nixos-eval.sh). Not a NixOS: nothing here acts.
{ lib, ... }:
let
  inherit (lib) mkOption types;
  off = mkOption { type = types.bool; default = false; };
  unit = types.submodule {
    freeformType = types.attrsOf types.anything;
    options = {
      description = mkOption { type = types.str; default = ""; };
      requiredBy = mkOption { type = types.listOf types.str; default = [ ]; };
      wants = mkOption { type = types.listOf types.str; default = [ ]; };
      after = mkOption { type = types.listOf types.str; default = [ ]; };
      before = mkOption { type = types.listOf types.str; default = [ ]; };
      conflicts = mkOption { type = types.listOf types.str; default = [ ]; };
      unitConfig = mkOption { type = types.attrsOf types.anything; default = { }; };
      serviceConfig = mkOption { type = types.attrsOf types.anything; default = { }; };
    };
  };
  fileSystem = types.submodule {
    options = {
      device = mkOption { type = types.nullOr types.str; default = null; };
      fsType = mkOption { type = types.str; default = "auto"; };
      options = mkOption { type = types.listOf types.str; default = [ "defaults" ]; };
    };
  };
in
{
  options = {
    assertions = mkOption {
      type = types.listOf (types.submodule {
        options.assertion = mkOption { type = types.bool; };
        options.message = mkOption { type = types.str; };
      });
      default = [ ];
    };
    fileSystems = mkOption { type = types.attrsOf fileSystem; default = { }; };
    system.etc.overlay.enable = off;
    boot.initrd.availableKernelModules = mkOption { type = types.listOf types.str; default = [ ]; };
    boot.initrd.systemd = {
      enable = off;
      repart.enable = off;
      dmVerity.enable = off;
      storePaths = mkOption { type = types.listOf types.str; default = [ ]; };
      initrdBin = mkOption { type = types.listOf types.str; default = [ ]; };
      contents = mkOption {
        type = types.attrsOf (types.submodule { options.text = mkOption { type = types.str; }; });
        default = { };
      };
      services = mkOption { type = types.attrsOf unit; default = { }; };
    };
  };
}
