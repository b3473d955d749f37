# A public cache: niks3 behind nginx with ACME on cache.example.org, objects in S3 (here Cloudflare R2),
# bookkeeping in a local PostgreSQL, secrets from sops-nix, GC on the default daily timer with its own
# gc-scoped token (`niks3 token create --name gc-timer --scope gc`).
{ config, ... }:
{
  services.niks3 = {
    enable = true;
    cacheUrl = "https://cache.example.org";
    s3 = {
      endpoint = "https://0123456789abcdef.r2.cloudflarestorage.com";
      bucket = "nix-cache";
      region = "auto";
      accessKeyFile = "/run/secrets/niks3/s3-access-key";
      secretKeyFile = "/run/secrets/niks3/s3-secret-key";
    };
    apiTokenFile = "/run/secrets/niks3/api-token";
    signKeyFiles = [ "/run/secrets/niks3/cache-1.sec" ];
    nginx = {
      enable = true;
      domain = "cache.example.org";
    };
    openFirewall = true;
    gc = {
      enable = true;
      tokenFile = "/run/secrets/niks3/gc-token";
    };
  };
}
