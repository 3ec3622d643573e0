# What tests/nix/eval-module.nix and tests/nix/eval-agent-module.nix share:
# small stubs of the NixOS options the modules set and read and of the
# packages they use, so that lib.evalModules runs with nixpkgs' lib alone,
# a TOML renderer for their settings, and the helpers of the checks.
{ lib }:

let
  inherit (lib) mkOption types;

  store = name: "/nix/store/00000000000000000000000000000000-${name}";

  fakePackage = name: {
    type = "derivation";
    inherit name;
    outPath = store name;
    meta.mainProgram = name;
  };

  # The TOML value type of pkgs.formats.toml.
  tomlValue = types.oneOf [
    types.bool
    types.int
    types.float
    types.str
    types.path
    (types.attrsOf tomlValue)
    (types.listOf tomlValue)
  ] // { description = "TOML value"; };
in
rec {
  inherit store;

  # Settings rendered as TOML, so that the real binaries can check them.
  toTOML = settings:
    let
      key = builtins.toJSON;
      inline = value:
        if builtins.isBool value then lib.boolToString value
        else if builtins.isInt value || builtins.isFloat value then toString value
        else if builtins.isString value then builtins.toJSON value
        else if builtins.isList value then "[" + lib.concatMapStringsSep ", " inline value + "]"
        else if builtins.isAttrs value then
          "{ " + lib.concatStringsSep ", " (lib.mapAttrsToList (k: v: "${key k} = ${inline v}") value) + " }"
        else throw "not a TOML value: ${builtins.typeOf value}";
      table = path: attrs:
        let
          plain = lib.filterAttrs (_: v: !builtins.isAttrs v) attrs;
          tables = lib.filterAttrs (_: builtins.isAttrs) attrs;
          header = "[" + lib.concatMapStringsSep "." key path + "]\n";
        in
        lib.optionalString (path != [ ] && (plain != { } || tables == { })) header
        + lib.concatStrings (lib.mapAttrsToList (k: v: "${key k} = ${inline v}\n") plain)
        + lib.concatStrings (lib.mapAttrsToList (k: table (path ++ [ k ])) tables);
    in
    table [ ] settings;

  pkgs = {
    formats.toml = {}: {
      type = tomlValue;
      generate = name: value: fakePackage name // { inherit value; };
    };
    runCommand = name: _env: script: fakePackage name // { inherit script; };
    writeText = name: text: fakePackage name // { inherit text; };
    writeShellApplication = { name, runtimeInputs, text }:
      fakePackage name // { inherit runtimeInputs text; };
    phoenix = fakePackage "phoenix-0.1.0";
    phoenix-agent = fakePackage "phoenix-agent-0.1.0" // { meta.mainProgram = "phoenix-agent"; };
    postgresql_15 = fakePackage "postgresql-15.0";
    prometheus = fakePackage "prometheus-3.0.0";
    prometheus-pushgateway = fakePackage "pushgateway-1.0.0";
    prometheus-alertmanager = fakePackage "alertmanager-0.25.0";
    pgbackrest = fakePackage "pgbackrest-2.45";
    openssl = fakePackage "openssl-3.0.0";
  };

  # Only the options the modules touch, typed as loosely as is safe; their
  # real definitions live in nixpkgs.
  nixos = {
    options = {
      assertions = mkOption {
        type = types.listOf (types.submodule {
          options = {
            assertion = mkOption { type = types.bool; };
            message = mkOption { type = types.str; };
          };
        });
        default = [ ];
      };
      warnings = mkOption { type = types.listOf types.str; default = [ ]; };
      environment.systemPackages = mkOption { type = types.listOf types.package; default = [ ]; };
      environment.etc = mkOption {
        type = types.attrsOf (types.submodule {
          options.source = mkOption { type = types.anything; };
        });
        default = { };
      };
      users.users = mkOption {
        type = types.attrsOf (types.submodule {
          options = {
            isSystemUser = mkOption { type = types.bool; default = false; };
            group = mkOption { type = types.str; };
            uid = mkOption { type = types.nullOr types.int; default = null; };
            description = mkOption { type = types.str; default = ""; };
          };
        });
        default = { };
      };
      users.groups = mkOption {
        type = types.attrsOf (types.submodule {
          options.gid = mkOption { type = types.nullOr types.int; default = null; };
        });
        default = { };
      };
      ids.uids = mkOption { type = types.attrsOf types.int; default = { postgres = 71; prometheus = 255; }; };
      ids.gids = mkOption { type = types.attrsOf types.int; default = { postgres = 71; prometheus = 255; }; };
      networking.firewall.allowedTCPPorts = mkOption { type = types.listOf types.port; default = [ ]; };
      services.postgresql.enable = mkOption { type = types.bool; default = false; };
      services.prometheus.enable = mkOption { type = types.bool; default = false; };
      services.grafana = mkOption { type = types.attrsOf types.anything; default = { }; };
      systemd.services = mkOption {
        type = types.attrsOf (types.submodule { freeformType = types.attrsOf types.anything; });
        default = { };
      };
      systemd.tmpfiles.rules = mkOption { type = types.listOf types.str; default = [ ]; };
    };
  };

  # expect "what" actual expected: a failure message, or nothing.
  expect = what: actual: expected:
    lib.optional (actual != expected)
      "${what}: expected ${builtins.toJSON expected}, got ${builtins.toJSON actual}";

  expectThat = what: holds: lib.optional (!holds) what;

  # evaluate module scenario: the config of `module` with `scenario` on the
  # stubs.
  evaluate = module: scenario: (lib.evalModules {
    modules = [
      nixos
      module
      { _module.args.pkgs = pkgs; }
      scenario
    ];
  }).config;
}
