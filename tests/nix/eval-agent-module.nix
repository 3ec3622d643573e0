# Evaluates modules/phoenix-agent.nix with lib.evalModules against the
# stubs of tests/nix/stubs.nix, then checks what it produced. Needs only
# nixpkgs' lib, like tests/nix/eval-module.nix:
#
#   nix-instantiate --eval --strict --json tests/nix/eval-agent-module.nix \
#     --argstr nixpkgsLib "$NIXPKGS_LIB"
#
# prints { failures = [ ... ]; configs = { <scenario> = "<TOML>"; };
# unit = { <key> = [ <word> ... ]; }; }. `failures` must be empty; each of
# `configs` is agent.toml as the module writes it, for `phoenix-agent check`
# to accept; `unit` is the service of the default scenario, key by key in
# words, to compare with packaging/phoenix-agent.service (tests/tests/nix.rs
# does all three).
{ nixpkgsLib }:

let
  lib = import (
    if builtins.pathExists (nixpkgsLib + "/lib/default.nix")
    then nixpkgsLib + "/lib"
    else nixpkgsLib
  );

  stubs = import ./stubs.nix { inherit lib; };
  inherit (stubs) expect expectThat store toTOML;

  evaluate = stubs.evaluate ../../modules/phoenix-agent.nix;

  url = "https://phoenix.example.com:6700";
  agent = "${store "phoenix-agent-0.1.0"}/bin/phoenix-agent";

  # What the module writes to agent.toml: the generated file's value, which
  # the stub keeps when the file is not checked at build time.
  written = config: config.environment.etc."phoenix-agent/agent.toml".source.value;

  defaults = evaluate {
    services.phoenix-agent = {
      enable = true;
      settings.api.url = url;
    };
  };
  defaultUnit = defaults.systemd.services.phoenix-agent;
  defaultsUnchecked = evaluate {
    services.phoenix-agent = {
      enable = true;
      checkConfig = false;
      settings.api.url = url;
    };
  };

  # Every typed key set, a free-form one, a state folder outside /var/lib.
  customSettings = {
    api = {
      inherit url;
      ca_file = "/etc/phoenix-agent/ca.pem";
      enrollment_token_file = "/run/secrets/phoenix-enrollment-token";
      name = "web-01";
      labels = { team = "payments"; region = "eu-west-1"; };
    };
    agent = { state_dir = "/srv/phoenix-agent"; collect_interval = "30s"; };
    queue = { max_bytes = "64 MiB"; max_age = "2h"; };
    health.listen = "off";
    remote_write = {
      url = "https://mimir.example.com/api/v1/push";
      basic_auth = { username = "agent"; password_file = "/run/secrets/mimir-password"; };
      labels.cluster = "eu";
    };
  };
  custom = evaluate {
    services.phoenix-agent = {
      enable = true;
      checkConfig = false;
      settings = customSettings;
    };
  };
  customUnit = custom.systemd.services.phoenix-agent;

  nestedState = evaluate {
    services.phoenix-agent = {
      enable = true;
      settings = { api.url = url; agent.state_dir = "/var/lib/phoenix/agent"; };
    };
  };

  bothAuths = evaluate {
    services.phoenix-agent = {
      enable = true;
      settings = {
        api.url = url;
        remote_write = {
          url = "https://mimir.example.com/api/v1/push";
          bearer_token_file = "/run/secrets/mimir-token";
          basic_auth = { username = "agent"; password_file = "/run/secrets/mimir-password"; };
        };
      };
    };
  };

  # A secret in the Nix store is refused by the option's type.
  storeToken = evaluate {
    services.phoenix-agent = {
      enable = true;
      settings.api = { inherit url; enrollment_token_file = store "enrollment-token"; };
    };
  };

  disabled = evaluate { services.phoenix-agent.settings.api.url = url; };

  failedAssertions = config: map (a: a.message) (lib.filter (a: !a.assertion) config.assertions);

  # A unit's keys as systemd reads them, each as its words: NixOS writes a
  # list as one line per item, true as "true"; the unit file says "yes".
  unitWords = unit:
    let
      word = value:
        if value == true then "yes"
        else if value == false then "no"
        else toString value;
      words = value: lib.concatMap (item: lib.filter (w: w != "") (lib.splitString " " (word item))) (lib.toList value);
    in
    lib.mapAttrs (_: words) (unit.unitConfig // unit.serviceConfig // {
      Description = unit.description;
      Wants = unit.wants;
      After = unit.after;
      WantedBy = unit.wantedBy;
    });

  failures = lib.concatLists [
    # Defaults: the URL given, the state folder, nothing else.
    (expect "default agent.toml" (written defaultsUnchecked) {
      api.url = url;
      agent.state_dir = "/var/lib/phoenix-agent";
      queue = { };
      health = { };
    })
    (expectThat "agent.toml is checked at build time"
      (lib.hasInfix "${agent} check --config" defaults.environment.etc."phoenix-agent/agent.toml".source.script))
    (expect "etc entries" (lib.attrNames defaults.environment.etc) [ "phoenix-agent/agent.toml" ])
    (expect "system packages" (map (p: p.name) defaults.environment.systemPackages) [ "phoenix-agent-0.1.0" ])
    (expect "user" defaults.users.users.phoenix-agent {
      isSystemUser = true;
      group = "phoenix-agent";
      uid = null;
      description = "Phoenix agent";
    })
    (expect "groups" (lib.attrNames defaults.users.groups) [ "phoenix-agent" ])
    (expect "no tmpfiles under /var/lib" defaults.systemd.tmpfiles.rules [ ])
    (expect "no failed assertions" (failedAssertions defaults) [ ])
    (expect "ExecStart" defaultUnit.serviceConfig.ExecStart "${agent} run --config /etc/phoenix-agent/agent.toml")
    (expect "RestartPreventExitStatus" defaultUnit.serviceConfig.RestartPreventExitStatus 78)
    (expect "Restart" defaultUnit.serviceConfig.Restart "on-failure")
    (expect "User" defaultUnit.serviceConfig.User "phoenix-agent")
    (expect "StateDirectory" defaultUnit.serviceConfig.StateDirectory "phoenix-agent")
    (expectThat "no ReadWritePaths under /var/lib" (!(defaultUnit.serviceConfig ? ReadWritePaths)))
    (expectThat "no DynamicUser" (!(defaultUnit.serviceConfig ? DynamicUser)))
    (expect "ProtectProc" defaultUnit.serviceConfig.ProtectProc "default")
    (expect "restart on a new agent.toml" defaultUnit.restartTriggers
      [ defaults.environment.etc."phoenix-agent/agent.toml".source ])
    (expect "wantedBy" defaultUnit.wantedBy [ "multi-user.target" ])

    # Custom settings: written exactly as given.
    (expect "custom agent.toml keeps every key" (written custom) customSettings)
    (expect "state folder outside /var/lib: tmpfiles" custom.systemd.tmpfiles.rules
      [ "d /srv/phoenix-agent 0700 phoenix-agent phoenix-agent -" ])
    (expect "state folder outside /var/lib: writable" customUnit.serviceConfig.ReadWritePaths [ "/srv/phoenix-agent" ])
    (expectThat "state folder outside /var/lib: no StateDirectory" (!(customUnit.serviceConfig ? StateDirectory)))

    (expect "nested state folder" nestedState.systemd.services.phoenix-agent.serviceConfig.StateDirectory "phoenix/agent")
    (expect "bearer and basic auth refused" (builtins.length (failedAssertions bothAuths)) 1)
    (expect "a secret in the store refused"
      (builtins.tryEval storeToken.services.phoenix-agent.settings.api.enrollment_token_file).success
      false)

    # Disabled: nothing at all.
    (expect "disabled: no unit" (disabled.systemd.services ? phoenix-agent) false)
    (expect "disabled: no users" disabled.users.users { })
    (expect "disabled: no etc" disabled.environment.etc { })
  ];
in
{
  inherit failures;
  configs = {
    defaults = toTOML (written defaultsUnchecked);
    custom = toTOML (written custom);
  };
  unit = unitWords defaultUnit;
}
