# checks.<system>.vm: services.phoenix on a NixOS VM, reached from a second
# one. Waits for the unit (READY=1 once start-up has settled), for /health
# to pass through the firewall, for port 80 to redirect to HTTPS and for the
# initial admin to log in over the API; looks for the package's bash
# completion and manual pages on the system; then edits the TOML file,
# applies it with a reload and checks that a restart keeps the edit.
{ pkgs, module }:

let
  login = pkgs.writeShellApplication {
    name = "phoenix-login";
    runtimeInputs = [ pkgs.coreutils pkgs.curl pkgs.jq ];
    text = ''
      password=$(tr -d '\n' </var/lib/phoenix/secrets/initial-admin-password)
      jq --null-input --arg password "$password" '{username: "admin", password: $password}' |
        curl --silent --show-error --fail --insecure \
          --header 'content-type: application/json' --data @- \
          https://127.0.0.1/api/v1/auth/login |
        jq --exit-status '.access_token | length > 0'
    '';
  };

  # An operator's edit: one more service.
  addService = pkgs.writeShellApplication {
    name = "phoenix-add-service";
    runtimeInputs = [ pkgs.coreutils ];
    text = ''
      printf '\n[services.marker]\ncommand = ["%s", "infinity"]\n' "$(command -v sleep)" \
        >>/etc/phoenix/phoenix.toml
    '';
  };
in
pkgs.testers.runNixOSTest {
  name = "phoenix";

  nodes.appliance = { pkgs, ... }: {
    imports = [ module ];
    services.phoenix = {
      enable = true;
      openFirewall = true;
    };
    environment.systemPackages = [ pkgs.curl pkgs.jq ];
    virtualisation.memorySize = 3072;
    virtualisation.cores = 2;
  };

  nodes.client = { pkgs, ... }: {
    environment.systemPackages = [ pkgs.curl pkgs.jq ];
  };

  testScript = ''
    start_all()

    with subtest("the supervisor tells systemd it is ready"):
        appliance.wait_for_unit("phoenix.service", timeout=900)

    with subtest("the configuration file is a plain file for root alone"):
        appliance.succeed("test -f /etc/phoenix/phoenix.toml && test ! -L /etc/phoenix/phoenix.toml")
        appliance.succeed("test \"$(stat -c %a /etc/phoenix/phoenix.toml)\" = 600")
        appliance.succeed("phoenix-supervisor check-config --config /etc/phoenix/phoenix.toml")

    with subtest("the package's completions and manual pages are on the system"):
        appliance.succeed("grep -q -- --latest /run/current-system/sw/share/bash-completion/completions/phoenixctl.bash")
        appliance.succeed("zcat -f /run/current-system/sw/share/man/man1/phoenixctl-restore.1* | grep -q 'phoenixctl restore'")

    with subtest("health passes, on the machine and through the firewall"):
        appliance.wait_until_succeeds(
            "curl -sf http://127.0.0.1:8081/health | jq -e '.status == \"pass\"'", timeout=300
        )
        client.wait_until_succeeds(
            "curl -sf http://appliance:8081/health | jq -e '.status == \"pass\"'", timeout=120
        )

    with subtest("plain HTTP redirects to HTTPS"):
        client.wait_until_succeeds(
            "curl -s -o /dev/null -w '%{http_code} %{redirect_url}' http://appliance/x | grep -qx '308 https://appliance/x'",
            timeout=120,
        )

    with subtest("the initial admin logs in over the API"):
        appliance.wait_for_open_port(443)
        appliance.wait_until_succeeds("${pkgs.lib.getExe login}", timeout=120)

    with subtest("an edit is applied by reload and kept across a restart"):
        appliance.succeed("${pkgs.lib.getExe addService}")
        appliance.succeed("systemctl reload phoenix.service")
        appliance.wait_until_succeeds(
            "phoenixctl --json status | jq -e '.services[] | select(.name == \"marker\" and .state == \"ready\")'",
            timeout=60,
        )
        appliance.systemctl("restart phoenix.service")
        appliance.wait_for_unit("phoenix.service", timeout=900)
        appliance.succeed("grep -qxF '[services.marker]' /etc/phoenix/phoenix.toml")
        appliance.wait_until_succeeds(
            "phoenixctl --json status | jq -e '.services[] | select(.name == \"marker\" and .state == \"ready\")'",
            timeout=60,
        )
  '';
}
