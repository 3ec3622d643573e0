# services.phoenix: the Phoenix appliance, phoenix-supervisor running
# PostgreSQL, Prometheus, the Phoenix API, and optionally the Pushgateway
# and the Alertmanager, from one TOML
# file, as a systemd service.
#
# The TOML file, /etc/phoenix/phoenix.toml, is the operator's, not Nix's:
# `settings` only decides what it holds when it is first written (at the
# first start, from EC2 user data when `ec2UserData` is on and some is
# given). After that, rebuilds and upgrades never touch it; edits are applied
# with `phoenixctl reload`. The servers' programs are named in it through
# stable links under /etc/phoenix/pkgs, which every rebuild points at the
# current packages, so an upgrade reaches an edited file too.
{ config, lib, pkgs, ... }:

let
  cfg = config.services.phoenix;
  settingsFormat = pkgs.formats.toml { };

  configFile = "/etc/phoenix/phoenix.toml";
  linkDir = "/etc/phoenix/pkgs";

  sectionEnabled = section: cfg.settings.${section}.enable or true;

  # The user a built-in runs as under a root supervisor; "" means root.
  sectionUser = section: default:
    if sectionEnabled section then cfg.settings.${section}.user or default else "";

  serviceUsers = lib.unique (lib.filter (user: user != "") [
    (sectionUser "postgres" "postgres")
    (sectionUser "prometheus" "prometheus")
    (sectionUser "pushgateway" "prometheus")
    (sectionUser "alertmanager" "prometheus")
    (sectionUser "api" "phoenix")
  ]);

  # "0.0.0.0:443" and "[::]:443" alike.
  portOf = address: lib.toInt (lib.last (lib.splitString ":" address));

  firewallPorts = [
    # ACME HTTP-01 challenges and the redirect to HTTPS
    (portOf (cfg.settings.tls.http_listen or "0.0.0.0:80"))
    (portOf (cfg.settings.health.listen or "0.0.0.0:8081"))
  ] ++ lib.optionals (sectionEnabled "api") [
    (portOf (cfg.settings.api.listen or "0.0.0.0:443"))
    (portOf (cfg.settings.api.agent_listen or "0.0.0.0:6700"))
  ];

  grafanaPasswordFile = "/var/lib/phoenix-grafana/admin-password";
  grafanaCert = "/var/lib/phoenix-grafana/tls/cert.pem";
  grafanaKey = "/var/lib/phoenix-grafana/tls/key.pem";

  controlSocket = "${cfg.settings.supervisor.run_dir or "/run/phoenix"}/control.sock";

  supervisor = lib.getExe' cfg.package "phoenix-supervisor";
  phoenixctl = lib.getExe' cfg.package "phoenixctl";

  generatedConfig = settingsFormat.generate "phoenix.toml" cfg.settings;

  # A typo in `settings` fails the build instead of the boot.
  defaultConfig =
    if cfg.checkConfig then
      pkgs.runCommand "phoenix.toml" { } ''
        ${supervisor} check-config --config ${generatedConfig}
        cp ${generatedConfig} $out
      ''
    else generatedConfig;

  # A built-in section's table with its program path option; other keys are
  # free-form and checked by `phoenix-supervisor check-config`.
  sectionOption = section: programOptions: lib.mkOption {
    type = lib.types.submodule {
      freeformType = settingsFormat.type;
      options = programOptions;
    };
    default = { };
    description = "The `[${section}]` table of the configuration file.";
  };

  programOption = { default, what }: lib.mkOption {
    type = lib.types.str;
    inherit default;
    description = ''
      ${what}. The default is a link that every rebuild points at the
      current package, so that a configuration file written once keeps
      working across upgrades.
    '';
  };
in
{
  options.services.phoenix = {
    enable = lib.mkEnableOption "the Phoenix appliance: phoenix-supervisor running PostgreSQL, Prometheus, the Pushgateway and the Phoenix API";

    package = lib.mkPackageOption pkgs "phoenix" { };

    postgresqlPackage = lib.mkPackageOption pkgs "postgresql_15" {
      extraDescription = ''
        Linked at ${linkDir}/postgresql. Changing the major version needs a
        dump and restore of the cluster in the state directory.
      '';
    };

    prometheusPackage = lib.mkPackageOption pkgs "prometheus" {
      extraDescription = "Linked at ${linkDir}/prometheus.";
    };

    pushgatewayPackage = lib.mkPackageOption pkgs "prometheus-pushgateway" {
      extraDescription = "Linked at ${linkDir}/pushgateway.";
    };

    alertmanagerPackage = lib.mkPackageOption pkgs "prometheus-alertmanager" {
      extraDescription = "Linked at ${linkDir}/alertmanager.";
    };

    pgbackrestPackage = lib.mkPackageOption pkgs "pgbackrest" {
      extraDescription = "Linked at ${linkDir}/pgbackrest; it archives WAL and takes the backups of `[backup]`.";
    };

    settings = lib.mkOption {
      type = lib.types.submodule {
        freeformType = settingsFormat.type;
        options = {
          postgres = sectionOption "postgres" {
            bin_dir = programOption {
              default = "${linkDir}/postgresql/bin";
              what = "Directory with `postgres`, `initdb`, `pg_isready` and `psql`";
            };
          };
          prometheus = sectionOption "prometheus" {
            bin = programOption {
              default = "${linkDir}/prometheus/bin/prometheus";
              what = "The Prometheus program";
            };
          };
          pushgateway = sectionOption "pushgateway" {
            bin = programOption {
              default = "${linkDir}/pushgateway/bin/pushgateway";
              what = "The Pushgateway program";
            };
          };
          alertmanager = sectionOption "alertmanager" {
            bin = programOption {
              default = "${linkDir}/alertmanager/bin/alertmanager";
              what = "The Alertmanager program";
            };
          };
          backup = sectionOption "backup" {
            pgbackrest = programOption {
              default = "${linkDir}/pgbackrest/bin/pgbackrest";
              what = "The pgBackRest program";
            };
          };
        };
      };
      default = { };
      example = lib.literalExpression ''
        {
          api.price_per_series_month = 0.08;
          prometheus.retention = "30d";
          tls.hostnames = [ "phoenix.example.com" ];
        }
      '';
      description = ''
        The initial content of ${configFile}, with the keys of
        docs/configuration.md (unknown keys are errors). It is written when
        that file does not exist yet and never again: later changes here
        reach a running machine only through
        /etc/phoenix/phoenix.default.toml, to compare and copy by hand.
        `[api] bin` is best left out: the default, `phoenix-api` next to
        the supervisor, follows `package`.
      '';
    };

    checkConfig = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = ''
        Whether to run `phoenix-supervisor check-config` on the generated
        file at build time. It runs `package` on the build machine, so
        turn it off when cross-compiling.
      '';
    };

    ec2UserData = lib.mkEnableOption ''
      taking the configuration file from EC2 user data (IMDSv2) at the first
      start, when the instance has some and it is a valid Phoenix
      configuration; its keys override `settings` key by key
    '';

    grafana = {
      enable = lib.mkEnableOption ''
        Grafana (services.grafana) on https://127.0.0.1:3000, with the
        managed Prometheus as its data source and the dashboards of
        dashboards/ (the appliance; experiments and cost) provisioned. Reach
        it over an SSH tunnel. It serves HTTPS with a certificate of its own
        (self-signed for localhost and 127.0.0.1, generated at the first
        start under /var/lib/phoenix-grafana/tls, key mode 0600, owner
        grafana) and secure cookies. The admin password is generated at the
        first start into /var/lib/phoenix-grafana/admin-password (mode 0600,
        owner grafana); there is no default password
      '';
      port = lib.mkOption {
        type = lib.types.port;
        default = 3000;
        description = "Grafana's port, on 127.0.0.1 only.";
      };
    };

    openFirewall = lib.mkOption {
      type = lib.types.bool;
      default = false;
      description = ''
        Whether to open the firewall for the API (`[api] listen`), the agent
        listener (`[api] agent_listen`), health (`[health] listen`) and
        plain HTTP for ACME challenges and the redirect to HTTPS
        (`[tls] http_listen`, port 80), with the ports given in `settings`. Ports changed
        later in the file on the machine are not followed.
      '';
    };
  };

  config = lib.mkIf cfg.enable {
    services.grafana = lib.mkIf cfg.grafana.enable {
      enable = true;
      settings = {
        server = {
          http_addr = "127.0.0.1";
          http_port = cfg.grafana.port;
          protocol = "https";
          cert_file = grafanaCert;
          cert_key = grafanaKey;
        };
        security = {
          admin_user = "admin";
          admin_password = "$__file{${grafanaPasswordFile}}";
          disable_gravatar = true;
          cookie_secure = true;
        };
        analytics.reporting_enabled = false;
        "auth.anonymous".enabled = false;
      };
      provision = {
        enable = true;
        datasources.settings.datasources = [{
          name = "Prometheus";
          type = "prometheus";
          uid = "phoenix-prometheus";
          url = "http://${cfg.settings.prometheus.listen or "127.0.0.1:9090"}";
          isDefault = true;
        }];
        dashboards.settings.providers = [{
          name = "phoenix";
          folder = "Phoenix";
          options.path = ../dashboards;
        }];
      };
    };

    # A random admin password and a certificate before Grafana's first
    # start; both kept after.
    systemd.services.phoenix-grafana-password = lib.mkIf cfg.grafana.enable {
      description = "Phoenix: Grafana's admin password and certificate";
      wantedBy = [ "grafana.service" ];
      before = [ "grafana.service" ];
      serviceConfig = {
        Type = "oneshot";
        RemainAfterExit = true;
        UMask = "0077";
      };
      script = ''
        install -d -m 0700 -o grafana -g grafana ${dirOf grafanaPasswordFile}
        if [ ! -s ${grafanaPasswordFile} ]; then
          tr -dc 'A-Za-z0-9' </dev/urandom | head -c 32 >${grafanaPasswordFile}
        fi
        chown grafana:grafana ${grafanaPasswordFile}
        chmod 0600 ${grafanaPasswordFile}
        install -d -m 0700 -o grafana -g grafana ${dirOf grafanaCert}
        if [ ! -s ${grafanaKey} ] || [ ! -s ${grafanaCert} ]; then
          ${pkgs.openssl}/bin/openssl req -x509 -newkey ec -pkeyopt ec_paramgen_curve:P-256 \
            -nodes -days 3650 -subj /CN=localhost \
            -addext "subjectAltName=DNS:localhost,IP:127.0.0.1" \
            -keyout ${grafanaKey} -out ${grafanaCert}
        fi
        chown grafana:grafana ${grafanaKey} ${grafanaCert}
        chmod 0600 ${grafanaKey}
      '';
    };

    warnings =
      lib.optional (config.services.postgresql.enable && sectionEnabled "postgres") ''
        services.phoenix runs its own PostgreSQL as user postgres, and services.postgresql is enabled too:
        both default to port 5432. Set services.phoenix.settings.postgres.port, or disable one of them.
      ''
      ++ lib.optional (config.services.prometheus.enable && sectionEnabled "prometheus") ''
        services.phoenix runs its own Prometheus as user prometheus, and services.prometheus is enabled too:
        both default to port 9090. Set services.phoenix.settings.prometheus.listen, or disable one of them.
      '';

    environment.systemPackages = [ cfg.package ];

    environment.etc = {
      "phoenix/phoenix.default.toml".source = defaultConfig;
    }
    // lib.optionalAttrs (sectionEnabled "postgres") {
      "phoenix/pkgs/postgresql".source = cfg.postgresqlPackage;
    }
    // lib.optionalAttrs (sectionEnabled "prometheus") {
      "phoenix/pkgs/prometheus".source = cfg.prometheusPackage;
    }
    // lib.optionalAttrs (sectionEnabled "pushgateway") {
      "phoenix/pkgs/pushgateway".source = cfg.pushgatewayPackage;
    }
    // lib.optionalAttrs (sectionEnabled "alertmanager") {
      "phoenix/pkgs/alertmanager".source = cfg.alertmanagerPackage;
    }
    // lib.optionalAttrs (sectionEnabled "postgres" && sectionEnabled "backup") {
      "phoenix/pkgs/pgbackrest".source = cfg.pgbackrestPackage;
    };

    # Fixed ids where NixOS has them (postgres, prometheus), so that data
    # keeps its owner when services.postgresql or services.prometheus
    # define the same users.
    users.users = lib.genAttrs serviceUsers (name: {
      isSystemUser = true;
      group = name;
      uid = config.ids.uids.${name} or null;
      description = lib.mkDefault "Phoenix appliance service ${name}";
    });
    users.groups = lib.genAttrs serviceUsers (name: {
      gid = config.ids.gids.${name} or null;
    });

    networking.firewall.allowedTCPPorts = lib.mkIf cfg.openFirewall firewallPorts;

    systemd.services.phoenix = {
      description = "Phoenix appliance supervisor";
      wantedBy = [ "multi-user.target" ];
      # The first start may read EC2 user data.
      wants = [ "network-online.target" ];
      after = [ "network-online.target" ];
      # The servers run from the links in ${linkDir}; a new package there
      # needs a restart. A new phoenix package changes ExecStart itself.
      restartTriggers = [ cfg.postgresqlPackage cfg.prometheusPackage cfg.pushgatewayPackage cfg.alertmanagerPackage ];

      serviceConfig = {
        Type = "notify";
        NotifyAccess = "main";
        # Writes ${configFile} when it is missing, and only then.
        ExecStartPre = lib.concatStringsSep " " ([ supervisor "first-boot" "--config" configFile "--defaults" "${defaultConfig}" ]
          ++ lib.optional cfg.ec2UserData "--ec2-user-data");
        ExecStart = "${supervisor} run --config ${configFile}";
        # Synchronous, and fails (leaving the running config) on a bad file.
        ExecReload = "${phoenixctl} --socket ${controlSocket} reload";
        # The supervisor puts itself in a leaf cgroup and each service in
        # one of its own, with memory, cpu and pids limits.
        Delegate = true;
        # SIGTERM to the supervisor alone: it stops the services in reverse
        # dependency order within `[supervisor] shutdown_timeout`.
        KillMode = "mixed";
        # READY=1 comes once start-up has settled: every service ready, or
        # parked as failed (STATUS= and /health say which); the first start runs
        # initdb and the API's migrations.
        TimeoutStartSec = "10min";
        # A backstop behind the supervisor's own shutdown_timeout (60 s).
        TimeoutStopSec = "5min";
        Restart = "on-failure";
        RestartSec = "10s";
        StateDirectory = "phoenix";
        StateDirectoryMode = "0755";
        RuntimeDirectory = "phoenix";
        RuntimeDirectoryMode = "0755";
        LogsDirectory = "phoenix";
        LogsDirectoryMode = "0750";
      };
    };
  };
}
