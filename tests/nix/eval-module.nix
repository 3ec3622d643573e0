# Evaluates modules/phoenix.nix with lib.evalModules against the stubs of
# tests/nix/stubs.nix (the NixOS options it sets and reads, the packages it
# uses), then checks what it produced. Needs only nixpkgs' lib (a nixpkgs or
# nixpkgs.lib checkout), not nixpkgs or a Nix store:
#
#   nix-instantiate --eval --strict --json tests/nix/eval-module.nix \
#     --argstr nixpkgsLib "$NIXPKGS_LIB"
#
# prints { failures = [ ... ]; configs = { <scenario> = "<TOML>"; }; }.
# `failures` must be empty; each of `configs` is the module's settings
# rendered as TOML, for `phoenix-supervisor check-config` to accept
# (tests/tests/nix.rs does both).
{ nixpkgsLib }:

let
  lib = import (
    if builtins.pathExists (nixpkgsLib + "/lib/default.nix")
    then nixpkgsLib + "/lib"
    else nixpkgsLib
  );

  stubs = import ./stubs.nix { inherit lib; };
  inherit (stubs) expect expectThat store toTOML;

  evaluate = stubs.evaluate ../../modules/phoenix.nix;

  links = {
    postgres.bin_dir = "/etc/phoenix/pkgs/postgresql/bin";
    prometheus.bin = "/etc/phoenix/pkgs/prometheus/bin/prometheus";
    pushgateway.bin = "/etc/phoenix/pkgs/pushgateway/bin/pushgateway";
    alertmanager.bin = "/etc/phoenix/pkgs/alertmanager/bin/alertmanager";
    backup.pgbackrest = "/etc/phoenix/pkgs/pgbackrest/bin/pgbackrest";
  };

  defaults = evaluate { services.phoenix.enable = true; };
  defaultUnit = defaults.systemd.services.phoenix;

  # Settings given to the module; all but the three program sections must
  # come out exactly as given.
  customSettings = {
    supervisor.run_dir = "/run/phoenix-custom";
    health.listen = "0.0.0.0:9081";
    api = {
      listen = "[::]:8443";
      agent_listen = "0.0.0.0:7700";
      user = "phoenix-api";
      price_per_series_month = 0.08;
    };
    postgres = {
      port = 5433;
      limits = { memory = "2GiB"; cpus = 1.5; };
      settings.max_connections = 200;
    };
    prometheus = { enable = false; retention = "30d"; };
    tls = { hostnames = [ "phoenix.example.com" ]; http_listen = "0.0.0.0:8080"; };
    services.worker = {
      command = [ "/run/current-system/sw/bin/sleep" "infinity" ];
      user = "phoenix-api";
      depends_on = [ "api" ];
      restart = { policy = "on-failure"; initial_delay = "1s"; };
    };
  };
  custom = evaluate {
    services.phoenix = {
      enable = true;
      ec2UserData = true;
      openFirewall = true;
      checkConfig = false;
      settings = customSettings;
    };
  };
  customUnit = custom.systemd.services.phoenix;

  rootApi = evaluate {
    services.phoenix = {
      enable = true;
      settings.api.user = "";
      settings.pushgateway.enable = false;
    };
  };

  disabled = evaluate { services.phoenix.settings.api.listen = "0.0.0.0:1"; };

  withGrafana = evaluate {
    services.phoenix = {
      enable = true;
      grafana.enable = true;
    };
  };
  grafana = withGrafana.services.grafana;

  alongsidePostgresql = evaluate {
    services.phoenix.enable = true;
    services.postgresql.enable = true;
  };

  failures = lib.concatLists [
    # Grafana: off by default; when on, loopback, no default password, the
    # managed Prometheus and the repository's dashboards provisioned.
    (expect "no grafana by default" (defaults.services.grafana.enable or false) false)
    (expect "no grafana password unit by default" (defaults.systemd.services ? phoenix-grafana-password) false)
    (expect "grafana on" grafana.enable true)
    (expect "grafana loopback" grafana.settings.server.http_addr "127.0.0.1")
    (expect "grafana over its own TLS" grafana.settings.server.protocol "https")
    (expect "grafana's key where the unit makes it"
      (lib.hasInfix grafana.settings.server.cert_key withGrafana.systemd.services.phoenix-grafana-password.script)
      true)
    (expect "grafana's cookies secure" grafana.settings.security.cookie_secure true)
    (expect "grafana password from a file"
      grafana.settings.security.admin_password "$__file{/var/lib/phoenix-grafana/admin-password}")
    (expect "grafana data source"
      (map (d: d.url) grafana.provision.datasources.settings.datasources) [ "http://127.0.0.1:9090" ])
    (expectThat "grafana dashboards from the repository"
      (lib.hasSuffix "/dashboards" (toString (lib.head grafana.provision.dashboards.settings.providers).options.path)))
    (expectThat "the password is made before grafana starts"
      (lib.elem "grafana.service" withGrafana.systemd.services.phoenix-grafana-password.before))
    # Defaults: the servers' programs through the stable links, nothing else.
    (expect "default settings" defaults.services.phoenix.settings links)
    (expect "default users" (lib.attrNames defaults.users.users) [ "phoenix" "postgres" "prometheus" ])
    (expect "postgres uid" defaults.users.users.postgres.uid 71)
    (expect "prometheus uid" defaults.users.users.prometheus.uid 255)
    (expect "phoenix uid" defaults.users.users.phoenix.uid null)
    (expect "system users"
      (lib.mapAttrsToList (name: user: user.isSystemUser && user.group == name) defaults.users.users)
      [ true true true ])
    (expect "groups" (lib.attrNames defaults.users.groups) [ "phoenix" "postgres" "prometheus" ])
    (expect "no firewall by default" defaults.networking.firewall.allowedTCPPorts [ ])
    (expect "etc entries" (lib.attrNames defaults.environment.etc) [
      "phoenix/phoenix.default.toml"
      "phoenix/pkgs/alertmanager"
      "phoenix/pkgs/pgbackrest"
      "phoenix/pkgs/postgresql"
      "phoenix/pkgs/prometheus"
      "phoenix/pkgs/pushgateway"
    ])
    (expect "pgbackrest link" defaults.environment.etc."phoenix/pkgs/pgbackrest".source.outPath (store "pgbackrest-2.45"))
    (expectThat "phoenix.toml must not be a store symlink" (!(defaults.environment.etc ? "phoenix/phoenix.toml")))
    (expect "postgresql link" defaults.environment.etc."phoenix/pkgs/postgresql".source.outPath (store "postgresql-15.0"))
    (expect "pushgateway link" defaults.environment.etc."phoenix/pkgs/pushgateway".source.outPath (store "pushgateway-1.0.0"))
    (expect "alertmanager link" defaults.environment.etc."phoenix/pkgs/alertmanager".source.outPath (store "alertmanager-0.25.0"))
    (expectThat "the default file is checked at build time"
      (lib.hasInfix "/bin/phoenix-supervisor check-config --config"
        defaults.environment.etc."phoenix/phoenix.default.toml".source.script))
    (expect "system packages" (map (p: p.name) defaults.environment.systemPackages) [ "phoenix-0.1.0" ])
    (expect "Type" defaultUnit.serviceConfig.Type "notify")
    (expect "NotifyAccess" defaultUnit.serviceConfig.NotifyAccess "main")
    (expect "Delegate" defaultUnit.serviceConfig.Delegate true)
    (expect "KillMode" defaultUnit.serviceConfig.KillMode "mixed")
    (expect "ExecStart" defaultUnit.serviceConfig.ExecStart
      "${store "phoenix-0.1.0"}/bin/phoenix-supervisor run --config /etc/phoenix/phoenix.toml")
    (expect "ExecReload" defaultUnit.serviceConfig.ExecReload
      "${store "phoenix-0.1.0"}/bin/phoenixctl --socket /run/phoenix/control.sock reload")
    (expect "ExecStartPre" defaultUnit.serviceConfig.ExecStartPre
      "${store "phoenix-0.1.0"}/bin/phoenix-supervisor first-boot --config /etc/phoenix/phoenix.toml --defaults ${store "phoenix.toml"}")
    (expect "wantedBy" defaultUnit.wantedBy [ "multi-user.target" ])
    (expect "no warnings" defaults.warnings [ ])

    # Custom settings: kept as given, ports and users follow them.
    (expect "custom settings keep every key"
      (builtins.removeAttrs custom.services.phoenix.settings [ "postgres" "prometheus" "pushgateway" "alertmanager" "backup" ])
      (builtins.removeAttrs customSettings [ "postgres" "prometheus" ]))
    (expect "custom postgres section" custom.services.phoenix.settings.postgres {
      bin_dir = "/etc/phoenix/pkgs/postgresql/bin";
      port = 5433;
      limits = { memory = "2GiB"; cpus = 1.5; };
      settings.max_connections = 200;
    })
    (expect "custom prometheus section" custom.services.phoenix.settings.prometheus {
      bin = "/etc/phoenix/pkgs/prometheus/bin/prometheus";
      enable = false;
      retention = "30d";
    })
    (expect "firewall ports" custom.networking.firewall.allowedTCPPorts [ 8080 9081 8443 7700 ])
    (expect "custom users" (lib.attrNames custom.users.users) [ "phoenix-api" "postgres" "prometheus" ])
    (expectThat "no prometheus link when prometheus is disabled"
      (!(custom.environment.etc ? "phoenix/pkgs/prometheus")))
    (expect "unchecked default file" custom.environment.etc."phoenix/phoenix.default.toml".source.value
      custom.services.phoenix.settings)
    (expect "first boot reads EC2 user data" customUnit.serviceConfig.ExecStartPre
      "${store "phoenix-0.1.0"}/bin/phoenix-supervisor first-boot --config /etc/phoenix/phoenix.toml --defaults ${store "phoenix.toml"} --ec2-user-data")
    (expect "control socket follows run_dir" customUnit.serviceConfig.ExecReload
      "${store "phoenix-0.1.0"}/bin/phoenixctl --socket /run/phoenix-custom/control.sock reload")

    # [api] user = "" runs the API as root: no phoenix user.
    (expect "users with a root API and no pushgateway" (lib.attrNames rootApi.users.users) [ "postgres" "prometheus" ])
    (expectThat "no pushgateway link when disabled" (!(rootApi.environment.etc ? "phoenix/pkgs/pushgateway")))

    # Disabled: nothing at all.
    (expect "disabled: no unit" (disabled.systemd.services ? phoenix) false)
    (expect "disabled: no users" disabled.users.users { })
    (expect "disabled: no etc" disabled.environment.etc { })

    (expect "a warning beside services.postgresql" (builtins.length alongsidePostgresql.warnings) 1)
  ];
in
{
  inherit failures;
  configs = {
    defaults = toTOML defaults.services.phoenix.settings;
    custom = toTOML custom.services.phoenix.settings;
    root-api = toTOML rootApi.services.phoenix.settings;
  };
}
