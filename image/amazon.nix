# nixosConfigurations.appliance: the appliance on EC2. The nixpkgs amazon
# profile brings the ENA and NVMe drivers, the serial console, SSH keys and
# host name from instance metadata and growpart; the amazon variant of
# system.build.images (packages.image-amazon) turns it into a VHD to
# register as an AMI. A running instance upgrades to this configuration.
{ modulesPath, ... }:

{
  imports = [
    ./common.nix
    "${modulesPath}/virtualisation/amazon-image.nix"
  ];

  # At the first start, EC2 user data (IMDSv2) holding a Phoenix TOML file
  # becomes /etc/phoenix/phoenix.toml.
  services.phoenix.ec2UserData = true;

  # amazon-init would take the same user data for a NixOS configuration,
  # copy it to /etc/nixos/configuration.nix and run nixos-rebuild with it.
  virtualisation.amazon-init.enable = false;
}
