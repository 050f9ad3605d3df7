# NixOS module for initrd-helper: the static binary and its config in the
# systemd initrd, and its unit ordered and required as units/initrd-helper.service
# is for dracut. See README.md "Integrations" for an example.
#
# Evaluated in `make test` (scripts/nixos-eval.sh) with Debian's nix against
# the pinned nixpkgs lib and a stub of exactly the NixOS options it sets;
# never booted on NixOS (full nixpkgs cannot be brought onto the CI machines).
{ config, lib, pkgs, ... }:

let
  cfg = config.services.initrd-helper;
  inherit (lib) mkOption mkIf mkDefault types;

  # The sections and keys initrd-helper's config.toml knows (the helper
  # itself refuses an unknown key at boot; refusing it here says so at build).
  known = {
    root = [ "layout" "tmpfs_options" "unverified" "mount_point" ];
    etc = [ "overlay" "state_dir" "factory" ];
    devices = [ "timeout_secs" "disk" ];
    data = [ "enabled" "partition_type" "encryption" "pcrs" "pcr_public_key" "pcr_signature" "signed_pcrs"
      "grow" "mount_point" "mkfs_options" "persist"
      "recovery_prompt" "recovery_tries" "recovery_timeout_secs" "reseal_after_recovery" ];
  };

  # TOML from plain values: JSON's string escapes are valid TOML basic strings.
  tomlValue = v:
    if builtins.isBool v then (if v then "true" else "false")
    else if builtins.isInt v then toString v
    else if builtins.isString v then builtins.toJSON v
    else if builtins.isList v then "[" + lib.concatMapStringsSep ", " tomlValue v + "]"
    else throw "services.initrd-helper.settings: ${builtins.typeOf v} is not a TOML value here";
  toTOML = sections: lib.concatStringsSep "\n" (lib.mapAttrsToList (name: keys:
    "[${name}]\n" + lib.concatStrings (lib.mapAttrsToList (k: v: "${k} = ${tomlValue v}\n") keys))
    sections);

  unknownKeys = lib.concatLists (lib.mapAttrsToList (section: keys:
    if known ? ${section}
    then map (k: "${section}.${k}") (lib.filter (k: !(lib.elem k known.${section})) (lib.attrNames keys))
    else [ section ]) cfg.settings);

  dataEnabled = cfg.settings.data.enabled or true;
  layout = cfg.settings.root.layout or "slot";
  # What stage 2 finds mounted at / (README "Layouts").
  rootFs = {
    slot = { device = "/dev/mapper/root"; fsType = "ext4"; options = [ "ro" ]; };
    tmpfs = { device = "none"; fsType = "tmpfs"; options = [ "mode=0755" ]; };
    data = { device = "/dev/mapper/data"; fsType = "ext4"; options = [ "rw" ]; };
  }.${layout} or (throw "services.initrd-helper.settings.root.layout: \"${layout}\" is none of slot, tmpfs, data");
  dataMountPoint = cfg.settings.data.mount_point or "/var";
in
{
  options.services.initrd-helper = {
    enable = lib.mkEnableOption "initrd-helper in the systemd initrd (verity root, data partition, /etc overlay, machine-id)";

    package = mkOption {
      type = types.package;
      default = pkgs.callPackage ./package.nix { };
      defaultText = lib.literalExpression "pkgs.callPackage ./package.nix { }";
      description = "The statically linked initrd-helper (its bin/initrd-helper is copied into the initrd).";
    };

    settings = mkOption {
      type = types.attrsOf (types.attrsOf (types.oneOf [ types.bool types.int types.str (types.listOf (types.either types.int types.str)) ]));
      default = { };
      example = lib.literalExpression ''{ data.pcrs = [ 7 ]; root.unverified = "refuse"; }'';
      description = "initrd-helper's config.toml, section by section (README \"Config file\"); rendered into the initrd at /etc/initrd-helper/config.toml.";
    };
  };

  config = mkIf cfg.enable {
    assertions = [
      { assertion = config.boot.initrd.systemd.enable;
        message = "services.initrd-helper needs the systemd initrd: set boot.initrd.systemd.enable = true."; }
      { assertion = !config.boot.initrd.systemd.repart.enable;
        message = "services.initrd-helper grows and formats the data partition itself: boot.initrd.systemd.repart would act on the same disk first; turn it off (keep systemd-repart for building the image)."; }
      { assertion = !config.system.etc.overlay.enable;
        message = "services.initrd-helper lays its own overlay on /etc (tmpfs upper layer): turn system.etc.overlay off."; }
      { assertion = !config.boot.initrd.systemd.dmVerity.enable;
        message = "services.initrd-helper activates dm-verity for the roothash= it owns: boot.initrd.systemd.dmVerity (systemd-veritysetup-generator) would activate the same root; turn it off."; }
      { assertion = unknownKeys == [ ];
        message = "services.initrd-helper.settings: unknown ${lib.concatStringsSep ", " unknownKeys} (config.toml knows ${lib.concatStringsSep ", " (lib.mapAttrsToList (s: ks: "${s}.{${lib.concatStringsSep "," ks}}") known)})."; }
      { assertion = !dataEnabled || !(config.fileSystems ? ${dataMountPoint}) || config.fileSystems.${dataMountPoint}.device == "/dev/mapper/data";
        message = "services.initrd-helper mounts the data partition at ${dataMountPoint}: fileSystems.\"${dataMountPoint}\" names another device; remove it, or set settings.data.enabled = false."; }
    ];

    # The helper mounts / (and, but for the slot layout, /usr from the
    # usrhash= slot) itself; stage 2 sees them so.
    fileSystems."/" = lib.mapAttrs (_: mkDefault) rootFs;
    fileSystems."/usr" = mkIf (layout != "slot") {
      device = mkDefault "/dev/mapper/usr";
      fsType = mkDefault "erofs";
      options = mkDefault [ "ro" ];
    };

    boot.initrd.availableKernelModules = [
      "dm_mod" "dm_verity" "dm_crypt" "overlay" "ext4" "erofs" "squashfs" "vfat"
      "tpm_crb" "tpm_tis" "xts" "aesni_intel" "aes_generic"
    ];

    boot.initrd.systemd.storePaths = [ "${cfg.package}/bin/initrd-helper" ];
    # First boot and a factory reset format the data volume.
    boot.initrd.systemd.initrdBin = [ pkgs.e2fsprogs ];
    boot.initrd.systemd.contents."/etc/initrd-helper/config.toml".text = toTOML cfg.settings;

    # As units/initrd-helper.service (dracut), plus initrd-root-fs.target's Requires.
    boot.initrd.systemd.services.initrd-helper = {
      description = "initrd-helper: prepare the root file system";
      documentation = [ "man:initrd-helper(8)" ];
      requiredBy = [ "initrd-root-fs.target" ];
      wants = [ "systemd-udev-trigger.service" ];
      after = [ "systemd-udev-trigger.service" "systemd-udevd.service" "systemd-modules-load.service"
        "systemd-pcrphase-initrd.service" ];
      before = [ "initrd-root-fs.target" "sysroot.mount" "initrd-root-device.target" "shutdown.target"
        "initrd-usr-fs.target" "sysusr-usr.mount" "sysroot-usr.mount" ];
      conflicts = [ "shutdown.target" ];
      unitConfig = {
        ConditionPathExists = "/etc/initrd-release";
        DefaultDependencies = false;
        OnFailure = "emergency.target";
        OnFailureJobMode = "replace-irreversibly";
      };
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        ExecStart = "${cfg.package}/bin/initrd-helper run";
        StandardOutput = "journal+console";
        StandardError = "journal+console";
        TimeoutStartSec = 180;
      };
    };
  };
}
