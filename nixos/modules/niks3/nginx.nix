# An nginx virtual host in front of the server: TLS (ACME) on a public domain, the read proxy and the
# push API proxied to the server's loopback address, pushes streamed without a size limit.
args@{ config, lib, ... }:
let
  cfg = config.services.niks3;
  common = import ./lib.nix args;
in
{
  options.services.niks3.nginx = {
    enable = lib.mkEnableOption "an nginx virtual host proxying to httpAddr";
    domain = lib.mkOption {
      type = lib.types.nullOr lib.types.str;
      default = null;
      example = "cache.example.org";
      description = "Domain of the nginx virtual host.";
    };
    enableACME = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Get a certificate for the domain with ACME (security.acme must be configured).";
    };
    forceSSL = lib.mkOption {
      type = lib.types.bool;
      default = true;
      description = "Redirect http to https.";
    };
  };

  config = lib.mkIf cfg.enable (
    lib.mkMerge [
      {
        assertions = [
          {
            assertion = !cfg.nginx.enable || cfg.nginx.domain != null;
            message = "services.niks3.nginx.enable needs services.niks3.nginx.domain.";
          }
          {
            assertion = !cfg.nginx.enable || cfg.apiTokenFile != null;
            message =
              "services.niks3: nginx publishes the push API on ${toString cfg.nginx.domain}; set "
              + "apiTokenFile (a secret of at least 36 characters, e.g. `openssl rand -hex 32`) instead of "
              + "relying on a token generated into the state directory.";
          }
        ];

        networking.firewall.allowedTCPPorts = lib.mkIf (cfg.openFirewall && cfg.nginx.enable) [
          80
          443
        ];
      }

      (lib.mkIf (cfg.nginx.enable && cfg.nginx.domain != null) {
        services.nginx = {
          enable = true;
          recommendedProxySettings = lib.mkDefault true;
          virtualHosts.${cfg.nginx.domain} = {
            inherit (cfg.nginx) enableACME forceSSL;
            locations."/" = {
              proxyPass = common.localUrl;
            };
            # Pushes stream NARs through the API: no size limit, no buffering to disk.
            locations."/api/" = {
              proxyPass = common.localUrl;
              extraConfig = ''
                client_max_body_size 0;
                proxy_request_buffering off;
                proxy_read_timeout 1h;
                proxy_send_timeout 1h;
              '';
            };
          };
        };
      })
    ]
  );
}
