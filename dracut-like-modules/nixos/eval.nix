# What scripts/nixos-eval.sh checks: module.nix evaluated by the real NixOS
# module system (the pinned nixpkgs lib) over stub-options.nix, for a
# verity-store appliance like the seeds' and for configs it must refuse.
# nix-instantiate --eval --strict --json --arg lib 'import .../lib' eval.nix
{ lib }:
let
  package = "/nix/store/00000000000000000000000000000000-initrd-helper-0.1.0";
  pkgs = {
    e2fsprogs = "/nix/store/11111111111111111111111111111111-e2fsprogs-1.47.0";
    callPackage = _: _: throw "the package default must not be evaluated when package is set";
  };
  eval = extra: lib.evalModules {
    modules = [
      ./stub-options.nix
      ./module.nix
      { _module.args.pkgs = pkgs; }
      {
        boot.initrd.systemd.enable = true;
        services.initrd-helper = {
          enable = true;
          inherit package;
          settings = {
            data.pcrs = [ 7 ];
            data.mkfs_options = [ "-L" "data" ];
            root.unverified = "refuse";
            devices.timeout_secs = 30;
          };
        };
      }
      extra
    ];
  };
  failed = c: map (a: a.message) (lib.filter (a: !a.assertion) c.config.assertions);
  good = eval { };
  svc = good.config.boot.initrd.systemd.services.initrd-helper;
in
{
  failed = failed good;
  config_toml = good.config.boot.initrd.systemd.contents."/etc/initrd-helper/config.toml".text;
  exec_start = svc.serviceConfig.ExecStart;
  required_by = svc.requiredBy;
  before = svc.before;
  after = svc.after;
  unit_config = svc.unitConfig;
  service_type = svc.serviceConfig.Type;
  store_paths = good.config.boot.initrd.systemd.storePaths;
  initrd_bin = good.config.boot.initrd.systemd.initrdBin;
  modules = good.config.boot.initrd.availableKernelModules;
  root_fs = good.config.fileSystems."/";
  has_usr_fs = good.config.fileSystems ? "/usr";
  tmpfs = let t = eval { services.initrd-helper.settings.root.layout = "tmpfs"; }; in {
    failed = failed t;
    root_fs = t.config.fileSystems."/";
    usr_fs = t.config.fileSystems."/usr";
    config_toml = t.config.boot.initrd.systemd.contents."/etc/initrd-helper/config.toml".text;
  };
  refused = {
    repart = failed (eval { boot.initrd.systemd.repart.enable = true; });
    etc_overlay = failed (eval { system.etc.overlay.enable = true; });
    dm_verity = failed (eval { boot.initrd.systemd.dmVerity.enable = true; });
    no_systemd_initrd = failed (eval { boot.initrd.systemd.enable = lib.mkForce false; });
    unknown_key = failed (eval { services.initrd-helper.settings.data.colour = "blue"; });
    var_elsewhere = failed (eval { fileSystems."/var".device = "/dev/sda3"; });
  };
  disabled_sets_nothing = (eval { services.initrd-helper.enable = lib.mkForce false; }).config.boot.initrd.systemd.services == { };
}
