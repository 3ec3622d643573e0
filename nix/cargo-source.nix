# The workspace's source as cargo sees it, for nix/package.nix and
# nix/agent-package.nix: everything cargo needs, and nothing else, so that
# editing Nix files, docs, scripts or packaging does not rebuild the Rust
# code. Cargo needs every workspace member's manifest, so whole member
# directories stay in. modules/ holds the NixOS modules, none of it cargo's.
{ lib }:

let
  root = ../.;
in
lib.fileset.toSource {
  inherit root;
  fileset = lib.fileset.difference root (lib.fileset.unions [
    (lib.fileset.fileFilter (file: file.hasExt "nix") root)
    (lib.fileset.maybeMissing ../flake.lock)
    ../README.md
    ../docs
    ../scripts
    ../modules
    ../packaging
    (lib.fileset.maybeMissing ../.ci)
    (lib.fileset.maybeMissing ../.git)
    (lib.fileset.maybeMissing ../target)
    (lib.fileset.maybeMissing ../.phoenix-dev)
  ]);
}
