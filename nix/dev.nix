# `nix run`: the whole stack locally in dev mode, like scripts/dev.sh: state
# in ./.phoenix-dev, loopback listeners on unprivileged ports, self-signed
# TLS. PostgreSQL, Prometheus and the Pushgateway come from nixpkgs.
{ writeShellApplication
, coreutils
, phoenix
, postgresql_15
, prometheus
, prometheus-pushgateway
, prometheus-alertmanager
, pgbackrest
}:

writeShellApplication {
  name = "phoenix-dev";
  runtimeInputs = [ coreutils ];
  text = ''
    mkdir -p .phoenix-dev
    config=.phoenix-dev/phoenix.toml
    if [ ! -f "$config" ]; then
      cat >"$config" <<TOML
    # Phoenix dev config (nix run). Edit, then:
    #   phoenixctl --socket .phoenix-dev/run/control.sock reload
    [postgres]
    bin_dir = "${postgresql_15}/bin"

    [prometheus]
    bin = "${prometheus}/bin/prometheus"

    [pushgateway]
    bin = "${prometheus-pushgateway}/bin/pushgateway"

    [alertmanager]
    bin = "${prometheus-alertmanager}/bin/alertmanager"

    [backup]
    pgbackrest = "${pgbackrest}/bin/pgbackrest"
    TOML
    fi
    echo "Phoenix dev stack (config: $config): health http://127.0.0.1:8081/health, console and API https://127.0.0.1:8443/"
    exec ${phoenix}/bin/phoenix-supervisor run --dev --config "$config"
  '';
}
