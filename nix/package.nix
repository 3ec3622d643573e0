# The Phoenix workspace: `phoenix-supervisor`, `phoenixctl` and `phoenix-api`
# in one package. They must share a bin/ directory: the supervisor starts
# `phoenix-api` from next to its own executable unless `[api] bin` says
# otherwise.
{ lib
, stdenv
, rustPlatform
, installShellFiles
}:

let
  workspace = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "phoenix";
  inherit (workspace.workspace.package) version;

  src = import ./cargo-source.nix { inherit lib; };

  cargoLock.lockFile = ../Cargo.lock;

  # The test and benchmark crates are workspace members; they are not part
  # of the appliance.
  cargoBuildFlags = [
    "--package"
    "phoenix-supervisor"
    "--package"
    "phoenix-api"
  ];

  nativeBuildInputs = [ installShellFiles ];

  # Shell completions and manual pages, from the binaries' own clap
  # definitions (their hidden `completions` and `man` subcommands); a cross
  # build, whose binaries cannot run here, goes without.
  postInstall = lib.optionalString (stdenv.buildPlatform.canExecute stdenv.hostPlatform) ''
    for bin in phoenixctl phoenix-supervisor; do
      installShellCompletion --cmd "$bin" \
        --bash <("$out/bin/$bin" completions bash) \
        --zsh <("$out/bin/$bin" completions zsh) \
        --fish <("$out/bin/$bin" completions fish)
      "$out/bin/$bin" man "$TMPDIR/man" >/dev/null
    done
    installManPage "$TMPDIR"/man/*.1
  '';

  # The black-box tests start PostgreSQL, Prometheus and the Pushgateway and
  # need root for users and cgroups; scripts/test.sh runs them, and the
  # NixOS VM test (checks.<system>.vm) runs the packaged binaries for real.
  doCheck = false;

  meta = {
    description = "Phoenix observability cost appliance: supervisor, control CLI and API";
    license = lib.licenses.asl20;
    mainProgram = "phoenix-supervisor";
    platforms = lib.platforms.linux;
  };
}
