# services.phoenix-agent: the Phoenix agent on a NixOS host, the systemd
# service of packaging/phoenix-agent.service (tests/tests/nix.rs keeps the
# two alike), with its TOML file written from `settings`.
#
# Unlike the appliance's file, /etc/phoenix-agent/agent.toml is Nix's: every
# rebuild writes it from `settings`, and a change restarts the agent. It
# names secret files (the enrollment token, a remote-write token or
# password) by path only; they stay out of the Nix store and must be
# readable by user phoenix-agent.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.phoenix-agent;
  settingsFormat = pkgs.formats.toml { };
  inherit (lib) types;

  user = "phoenix-agent";
  # `phoenix-agent status` and `check` read this path when given none.
  configPath = "/etc/phoenix-agent/agent.toml";

  # systemd creates and owns a state folder under /var/lib
  # (StateDirectory=); tmpfiles creates one elsewhere.
  stateDir = cfg.settings.agent.state_dir;
  stateUnderVarLib = lib.hasPrefix "/var/lib/" stateDir;

  agent = lib.getExe cfg.package;

  # TOML has no null: an unset key is left out, and the agent's default
  # applies.
  generatedConfig = settingsFormat.generate "phoenix-agent.toml"
    (lib.filterAttrsRecursive (_: value: value != null) cfg.settings);

  # A bad key fails the build instead of the agent's start.
  configFile =
    if cfg.checkConfig then
      pkgs.runCommand "phoenix-agent.toml" { } ''
        ${agent} check --config ${generatedConfig}
        cp ${generatedConfig} $out
      ''
    else generatedConfig;

  # A table of agent.toml: typed keys, the others free-form and checked by
  # `phoenix-agent check`.
  section = name: options: lib.mkOption {
    type = types.submodule {
      freeformType = settingsFormat.type;
      inherit options;
    };
    default = { };
    description = "The `[${name}]` table of agent.toml.";
  };

  optionalKey = type: description: lib.mkOption {
    type = types.nullOr type;
    default = null;
    inherit description;
  };

  secretFile = what: optionalKey types.externalPath ''
    ${what}. A path outside the Nix store (agent.toml holds the path, not
    the secret), readable by user phoenix-agent: with agenix or sops-nix,
    make that user its owner.
  '';
in
{
  options.services.phoenix-agent = {
    enable = lib.mkEnableOption "the Phoenix agent: process metrics, reduction pipelines and experiments for a Phoenix control plane";

    package = lib.mkPackageOption pkgs "phoenix-agent" { };

    settings = lib.mkOption {
      type = types.submodule {
        freeformType = settingsFormat.type;
        options = {
          api = section "api" {
            url = lib.mkOption {
              type = types.str;
              example = "https://phoenix.example.com:6700";
              description = "The origin of the control plane's agent listener (`[api] agent_listen`).";
            };
            ca_file = optionalKey types.path ''
              The CA certificate (PEM) the control plane's certificate is
              checked against; null: the system's roots.
            '';
            enrollment_token_file = secretFile ''
              The one-time enrollment token, read once at the first start;
              the credential it is traded for is kept in `agent.state_dir`
            '';
            name = optionalKey types.str "The name to enroll with; null: the host name.";
          };
          agent = section "agent" {
            state_dir = lib.mkOption {
              type = types.externalPath;
              default = "/var/lib/phoenix-agent";
              description = ''
                The credential and the queue of unsent samples, owned by
                user phoenix-agent, mode 0700.
              '';
            };
            collect_interval = optionalKey types.str "How often processes are sampled, 1s to 1h; null: 15s.";
          };
          queue = section "queue" {
            max_bytes = optionalKey (types.either types.ints.positive types.str) ''
              The queue's bound on disk, e.g. "256 MiB" (the default);
              the oldest batches are evicted, and counted, beyond it.
            '';
            max_age = optionalKey types.str ''
              The oldest a queued batch may grow, up to 6h (the
              appliance's out-of-order window); null: 1h.
            '';
          };
          health = section "health" {
            listen = optionalKey types.str ''
              A loopback address and port for `/metrics`, or "off"; null:
              127.0.0.1:9465. Loopback only, so no firewall port.
            '';
          };
          remote_write = lib.mkOption {
            type = types.nullOr (types.submodule {
              freeformType = settingsFormat.type;
              options = {
                url = lib.mkOption {
                  type = types.str;
                  example = "https://mimir.example.com/api/v1/push";
                  description = "The remote-write endpoint that receives the live pipeline.";
                };
                ca_file = optionalKey types.path "The CA certificate (PEM) of the endpoint; null: the system's roots.";
                bearer_token_file = secretFile "The bearer token of the endpoint";
                basic_auth = optionalKey
                  (types.submodule {
                    options = {
                      username = lib.mkOption {
                        type = types.str;
                        description = "The user name.";
                      };
                      password_file = lib.mkOption {
                        type = types.externalPath;
                        description = "The password's file, outside the Nix store, readable by user phoenix-agent.";
                      };
                    };
                  }) "Basic authentication, instead of `bearer_token_file`.";
              };
            });
            default = null;
            description = "The `[remote_write]` table of agent.toml: an external endpoint; null: none.";
          };
        };
      };
      example = lib.literalExpression ''
        {
          api = {
            url = "https://phoenix.example.com:6700";
            ca_file = "/etc/phoenix-agent/ca.pem";
            enrollment_token_file = "/run/secrets/phoenix-enrollment-token";
            labels.team = "payments";
          };
          agent.collect_interval = "30s";
        }
      '';
      description = ''
        The content of ${configPath}, with the keys of the agent's
        configuration file (unknown keys are errors). Relative paths are
        not allowed: the file lives in the Nix store.
      '';
    };

    checkConfig = lib.mkOption {
      type = types.bool;
      default = true;
      description = ''
        Whether to run `phoenix-agent check` on the generated file at build
        time. It runs `package` on the build machine, so turn it off when
        cross-compiling.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    assertions = [
      {
        assertion = cfg.settings.remote_write == null
          || cfg.settings.remote_write.bearer_token_file == null
          || cfg.settings.remote_write.basic_auth == null;
        message = "services.phoenix-agent.settings.remote_write: set bearer_token_file or basic_auth, not both.";
      }
    ];

    # For `phoenix-agent status` and `preview` by hand.
    environment.systemPackages = [ cfg.package ];

    environment.etc."phoenix-agent/agent.toml".source = configFile;

    # A static system user, not DynamicUser: secret files are given to it by
    # owner or group before the first start, and the state folder keeps one
    # owner across restarts and upgrades where `phoenix-agent status` finds
    # it, not behind /var/lib/private.
    users.users.${user} = {
      isSystemUser = true;
      group = user;
      description = "Phoenix agent";
    };
    users.groups.${user} = { };

    systemd.tmpfiles.rules = lib.optional (!stateUnderVarLib) "d ${stateDir} 0700 ${user} ${user} -";

    systemd.services.phoenix-agent = {
      description = "Phoenix agent: process metrics, reduction pipelines and experiments";
      wantedBy = [ "multi-user.target" ];
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      restartTriggers = [ configFile ];

      # A crash loop ends after 5 starts within 5 minutes; an unreachable
      # control plane is no crash: the agent retries inside.
      unitConfig = {
        StartLimitIntervalSec = "5min";
        StartLimitBurst = 5;
      };

      serviceConfig = {
        Type = "exec";
        ExecStart = "${agent} run --config ${configPath}";
        Restart = "on-failure";
        RestartSec = "10s";
        # The credential was refused (revoked): enrolling anew is the
        # operator's, so no restart. Delete <state_dir>/credential, give a
        # new enrollment token and restart the unit.
        RestartPreventExitStatus = 78;

        User = user;
        Group = user;
        UMask = "0077";

        # CPU and memory come from every process's /proc/<pid>/stat and
        # statm, readable by any user: other processes must stay visible
        # (no ProtectProc=invisible), and /proc/stat, which CPU shares are
        # computed against, too (no ProcSubset=pid).
        ProtectProc = "default";
        ProcSubset = "all";

        CapabilityBoundingSet = "";
        AmbientCapabilities = "";
        NoNewPrivileges = true;
        ProtectSystem = "strict";
        ProtectHome = true;
        PrivateTmp = true;
        PrivateDevices = true;
        PrivateIPC = true;
        PrivateMounts = true;
        PrivateUsers = true;
        ProtectKernelTunables = true;
        ProtectKernelModules = true;
        ProtectKernelLogs = true;
        ProtectControlGroups = true;
        ProtectClock = true;
        ProtectHostname = true;
        RestrictAddressFamilies = [ "AF_INET" "AF_INET6" "AF_UNIX" ];
        RestrictNamespaces = true;
        RestrictRealtime = true;
        RestrictSUIDSGID = true;
        LockPersonality = true;
        MemoryDenyWriteExecute = true;
        RemoveIPC = true;
        SystemCallArchitectures = "native";
        SystemCallFilter = [ "@system-service" "~@privileged @resources" ];
        SystemCallErrorNumber = "EPERM";
        MemoryMax = "128M";
      }
      // (if stateUnderVarLib then {
        StateDirectory = lib.removePrefix "/var/lib/" stateDir;
        StateDirectoryMode = "0700";
      } else {
        ReadWritePaths = [ stateDir ];
      });
    };
  };
}
