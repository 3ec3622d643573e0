# The container images of deploy/kubernetes: `phoenix-api` and
# `phoenix-agent`, each its binary from this flake's packages and the CA
# roots, nothing else (no shell, no package manager). Names and tags are the
# ones deploy/kubernetes/kustomization.yaml uses: the workspace's version.
#
#   nix build .#image-api && docker load < result
{ dockerTools
, cacert
, phoenix
, phoenix-agent
}:

let
  caBundle = "${cacert}/etc/ssl/certs/ca-bundle.crt";
in
{
  api = dockerTools.buildLayeredImage {
    name = "phoenix-api";
    tag = phoenix.version;
    contents = [ cacert ];
    config = {
      Entrypoint = [ "${phoenix}/bin/phoenix-api" ];
      # The Deployment runs it as this user as well (runAsNonRoot).
      User = "65532:65532";
      Env = [ "SSL_CERT_FILE=${caBundle}" ];
      ExposedPorts = {
        "8443/tcp" = { };
        "6700/tcp" = { };
      };
    };
  };

  agent = dockerTools.buildLayeredImage {
    name = "phoenix-agent";
    tag = phoenix-agent.version;
    contents = [ cacert ];
    config = {
      Entrypoint = [ "${phoenix-agent}/bin/phoenix-agent" ];
      Cmd = [ "run" "--config" "/etc/phoenix-agent/agent.toml" ];
      Env = [ "SSL_CERT_FILE=${caBundle}" ];
    };
  };
}
