# nixosConfigurations.appliance-qemu: the appliance in a local QEMU VM, for
# trying it out (packages.image-qcow2, `nix run .#qemu`). Not for
# production: root logs in on the serial console without a password.
{ lib, modulesPath, ... }:

{
  imports = [
    ./common.nix
    "${modulesPath}/profiles/qemu-guest.nix"
  ];

  # The image builder (system.build.images.qemu) sets the same.
  fileSystems."/" = {
    device = "/dev/disk/by-label/nixos";
    fsType = "ext4";
    autoResize = true;
  };
  boot.loader.grub.device = lib.mkDefault "/dev/vda";

  # `nix run .#qemu` attaches the serial console to the terminal.
  boot.kernelParams = [ "console=ttyS0,115200n8" ];
  boot.loader.grub.extraConfig = ''
    serial --unit=0 --speed=115200
    terminal_output serial console
    terminal_input serial console
  '';
  services.getty.autologinUser = "root";
}
