# `phoenix-agent` alone, for the hosts it runs on (services.phoenix-agent,
# modules/phoenix-agent.nix): none of the appliance's binaries, nor their
# dependencies in its closure.
{ lib
, rustPlatform
}:

let
  workspace = lib.importTOML ../Cargo.toml;
in
rustPlatform.buildRustPackage {
  pname = "phoenix-agent";
  inherit (workspace.workspace.package) version;

  src = import ./cargo-source.nix { inherit lib; };

  cargoLock.lockFile = ../Cargo.lock;

  cargoBuildFlags = [
    "--package"
    "phoenix-agent"
  ];

  # As for nix/package.nix: scripts/test.sh runs the unit tests and the
  # black-box tests of real agents (tests/tests/agent_*.rs).
  doCheck = false;

  meta = {
    description = "Phoenix agent: process metrics, reduction pipelines and experiments, delivered through a durable queue";
    license = lib.licenses.asl20;
    mainProgram = "phoenix-agent";
    platforms = lib.platforms.linux;
  };
}
