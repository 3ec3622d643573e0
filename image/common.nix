# The Phoenix appliance, whatever it boots on: phoenix-supervisor with its
# servers, SSH by key only, and a firewall open only for the appliance's
# ports (80, 443, 6700, 8081 from services.phoenix.openFirewall) and SSH.
{ lib, ... }:

{
  services.phoenix = {
    enable = true;
    openFirewall = true;
  };

  # Keys come from the platform (EC2 instance metadata); no passwords at all.
  services.openssh = {
    enable = true;
    settings = {
      PasswordAuthentication = false;
      KbdInteractiveAuthentication = false;
      PermitRootLogin = "prohibit-password";
    };
  };

  networking.firewall.enable = true;

  # The root file system grows to the disk it is given.
  boot.growPartition = true;

  # Upgrades are `nixos-rebuild switch --flake ...#<configuration>`.
  nix.settings.experimental-features = [ "nix-command" "flakes" ];

  documentation.enable = lib.mkDefault false;
  time.timeZone = "UTC";

  nixpkgs.hostPlatform = lib.mkDefault "x86_64-linux";
  system.stateVersion = "26.05";
}
