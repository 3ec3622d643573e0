{
  description = "Phoenix: the observability cost appliance (supervisor, API, agent, NixOS modules, EC2 and QEMU images)";

  # nixos-26.05: system.build.images, runNixOSTest and a Rust new enough for
  # edition 2024. flake.lock pins the revision.
  inputs.nixpkgs.url = "github:NixOS/nixpkgs/nixos-26.05";

  outputs = { self, nixpkgs }:
    let
      inherit (nixpkgs) lib;

      systems = [ "x86_64-linux" "aarch64-linux" ];
      forAllSystems = f: lib.genAttrs systems (system: f system nixpkgs.legacyPackages.${system});

      # The images are x86_64 only, like the EC2 instance types we target.
      imageSystem = "x86_64-linux";
      imagePkgs = nixpkgs.legacyPackages.${imageSystem};
      amazonImages = self.nixosConfigurations.appliance.config.system.build.images;
      qemuImages = self.nixosConfigurations.appliance-qemu.config.system.build.images;

      # nixpkgs-fmt is archived upstream. Should nixpkgs drop it (or make it
      # a throwing alias), the Nix lint check and `nix fmt` go away and
      # tests/tests/nix.rs, with nixpkgs-fmt from crates.io, remains.
      nixpkgsFmt = pkgs:
        let
          found = builtins.tryEval (pkgs.nixpkgs-fmt or null);
        in
        if found.success then found.value else null;

      nixFiles = lib.fileset.toSource {
        root = ./.;
        fileset = lib.fileset.fileFilter (file: file.hasExt "nix") ./.;
      };
    in
    {
      overlays.default = final: _prev: {
        phoenix = final.callPackage ./nix/package.nix { };
        phoenix-agent = final.callPackage ./nix/agent-package.nix { };
      };

      packages = forAllSystems (system: pkgs:
        let
          images = pkgs.callPackage ./nix/images.nix {
            inherit (self.packages.${system}) phoenix phoenix-agent;
          };
        in
        {
          default = self.packages.${system}.phoenix;
          phoenix = pkgs.callPackage ./nix/package.nix { };
          phoenix-agent = pkgs.callPackage ./nix/agent-package.nix { };
          # Container images for deploy/kubernetes.
          image-api = images.api;
          image-agent = images.agent;
        }
        // lib.optionalAttrs (system == imageSystem) {
          image-amazon = amazonImages.amazon;
          image-qcow2 = qemuImages.qemu;
        });

      # services.phoenix, with the package built from this flake by default.
      nixosModules.default = { lib, pkgs, ... }: {
        imports = [ ./modules/phoenix.nix ];
        services.phoenix.package = lib.mkDefault (pkgs.callPackage ./nix/package.nix { });
      };

      # services.phoenix-agent, for the monitored hosts, likewise.
      nixosModules.phoenix-agent = { lib, pkgs, ... }: {
        imports = [ ./modules/phoenix-agent.nix ];
        services.phoenix-agent.package = lib.mkDefault (pkgs.callPackage ./nix/agent-package.nix { });
      };

      nixosConfigurations = {
        appliance = lib.nixosSystem {
          modules = [ self.nixosModules.default ./image/amazon.nix ];
        };
        appliance-qemu = lib.nixosSystem {
          modules = [ self.nixosModules.default ./image/qemu.nix ];
        };
      };

      apps.${imageSystem} =
        let
          qemu = {
            type = "app";
            program = lib.getExe (imagePkgs.callPackage ./image/run-qemu.nix {
              image = self.packages.${imageSystem}.image-qcow2;
            });
            meta.description = "Boot the Phoenix appliance's qcow2 image in QEMU, ports forwarded to loopback";
          };
        in
        {
          default = {
            type = "app";
            program = lib.getExe (imagePkgs.callPackage ./nix/dev.nix {
              phoenix = self.packages.${imageSystem}.phoenix;
            });
            meta.description = "Run the whole Phoenix stack locally in dev mode (state in ./.phoenix-dev)";
          };
          inherit qemu;
        };

      checks = forAllSystems (system: pkgs:
        let
          phoenix = self.packages.${system}.phoenix;
        in
        {
          inherit phoenix;
          inherit (self.packages.${system}) phoenix-agent;

          vm = import ./nix/vm-test.nix {
            inherit pkgs;
            module = self.nixosModules.default;
          };

          clippy = phoenix.overrideAttrs (old: {
            pname = "phoenix-clippy";
            nativeBuildInputs = old.nativeBuildInputs ++ [ pkgs.clippy ];
            buildPhase = ''
              cargo clippy --offline --locked --workspace --all-targets -- -D warnings
            '';
            installPhase = ''
              touch $out
            '';
          });

          rustfmt = pkgs.runCommand "phoenix-rustfmt" { nativeBuildInputs = [ pkgs.cargo pkgs.rustfmt ]; } ''
            export HOME=$TMPDIR
            cd ${phoenix.src}
            cargo fmt --all --check
            touch $out
          '';
        }
        // lib.optionalAttrs (nixpkgsFmt pkgs != null) {
          nix-lint = pkgs.runCommand "phoenix-nix-lint" { nativeBuildInputs = [ (nixpkgsFmt pkgs) pkgs.deadnix ]; } ''
            cd ${nixFiles}
            nixpkgs-fmt --check $(find . -name '*.nix' | sort)
            deadnix --fail .
            touch $out
          '';
        });

      devShells = forAllSystems (system: pkgs: {
        default = pkgs.mkShell {
          inputsFrom = [ self.packages.${system}.phoenix ];
          packages = lib.optional (nixpkgsFmt pkgs != null) (nixpkgsFmt pkgs) ++ [
            pkgs.clippy
            pkgs.rustfmt
            pkgs.deadnix
            pkgs.postgresql_15
            pkgs.prometheus
            pkgs.prometheus-pushgateway
            pkgs.prometheus-alertmanager
            pkgs.pgbackrest
            pkgs.curl
            pkgs.jq
          ];
        };
      });

      # `nix fmt` formats the whole flake. A bare `nix fmt` used to run the
      # formatter with "."; newer Nix (NixOS/nix#11438) runs it with no
      # arguments (and sets PRJ_ROOT to the flake's directory), and
      # nixpkgs-fmt with no arguments formats stdin: it would wait for input.
      formatter = lib.filterAttrs (_system: fmt: fmt != null)
        (forAllSystems (_system: pkgs:
          let
            fmt = nixpkgsFmt pkgs;
          in
          if fmt == null then null
          else
            pkgs.writeShellApplication {
              name = "phoenix-nix-fmt";
              runtimeInputs = [ fmt ];
              text = ''
                if [[ $# -eq 0 ]]; then
                  set -- "''${PRJ_ROOT:-.}"
                fi
                exec nixpkgs-fmt "$@"
              '';
            }));
    };
}
