# `nix run .#qemu`: boots packages.image-qcow2 in QEMU with the appliance's
# ports forwarded to loopback. The disk is a copy of the image in
# $PHOENIX_QEMU_DIR (default ~/.local/state/phoenix-qemu) and is kept
# between runs, like a real machine's; delete it to start afresh.
{ writeShellApplication
, coreutils
, qemu_kvm
, image
}:

writeShellApplication {
  name = "phoenix-qemu";
  runtimeInputs = [ coreutils qemu_kvm ];
  text = ''
    image=${image}/${image.passthru.filePath}
    dir=''${PHOENIX_QEMU_DIR:-''${XDG_STATE_HOME:-$HOME/.local/state}/phoenix-qemu}
    disk=$dir/disk.qcow2
    mkdir -p "$dir"
    if [[ ! -e $disk ]]; then
      echo "phoenix-qemu: new disk $disk from $image"
      cp --no-preserve=mode "$image" "$disk"
      # The root file system grows into the new space at boot.
      qemu-img resize -f qcow2 "$disk" "''${PHOENIX_QEMU_DISK_SIZE:-20G}"
    fi

    accel=(-accel tcg -cpu max)
    if [[ -r /dev/kvm && -w /dev/kvm ]]; then
      accel=(-accel kvm -cpu host)
    fi

    cat <<MESSAGE
    phoenix-qemu: booting; root logs in on this console. Quit QEMU with Ctrl-A X.
      health  http://127.0.0.1:8081/health
      API     https://127.0.0.1:8443/   (self-signed certificate)
      agents  127.0.0.1:6700
      SSH     ssh -p 2222 root@127.0.0.1 (keys only; add one first)
    MESSAGE

    exec qemu-system-x86_64 "''${accel[@]}" \
      -m "''${PHOENIX_QEMU_MEMORY:-3072}" -smp 2 -nographic \
      -drive "file=$disk,if=virtio,format=qcow2" \
      -nic "user,model=virtio-net-pci,hostfwd=tcp:127.0.0.1:8081-:8081,hostfwd=tcp:127.0.0.1:8443-:443,hostfwd=tcp:127.0.0.1:6700-:6700,hostfwd=tcp:127.0.0.1:8080-:80,hostfwd=tcp:127.0.0.1:2222-:22" \
      "$@"
  '';
}
