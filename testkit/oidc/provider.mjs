// A real OpenID provider for niks3's tests: the certified `oidc-provider` package, configured to hand out
// JWT access tokens through the client_credentials grant (RFC 6749 §4.4) with a resource indicator
// (RFC 8707) as the audience. That is the shortest path in the library from "a client id and secret" to a
// signed JWT: no browser, no login, no consent screen. Each client stands for one CI job: the claims it
// is configured with (repository, ref, event_name, …) go into every token it gets (extraTokenClaims), the
// way GitHub Actions puts them into its ID tokens; `sub` is the client id.
//
// Usage: NIKS3_OIDC_PROVIDER_DIR=<where `oidc-provider` is installed> node provider.mjs CONFIG.json
// (testkit/src/oidc.rs does this). CONFIG: { "port", "keys_file", "rotate", "clients": [{ "client_id",
// "client_secret", "claims", "ttl" }] }. The signing keys (private JWKs) live in keys_file: made on first
// start; with "rotate" a new key is put first (the one tokens are signed with from then on) and the old
// ones are dropped, as an issuer rotating its keys does. Prints "listening <issuer>" once it serves.
// GET /test/jwks-count answers how many times the JWKS was fetched (the tests check the server's cache).
import { readFileSync, writeFileSync, existsSync } from 'node:fs';
import { generateKeyPairSync, randomBytes } from 'node:crypto';
import { join } from 'node:path';
import { pathToFileURL } from 'node:url';

// Imported by path: the package lives in a cache directory (scripts/install-deps.sh --test), not beside
// this file, and ES modules do not search NODE_PATH.
const installed = join(process.env.NIKS3_OIDC_PROVIDER_DIR, 'node_modules/oidc-provider/lib/index.js');
const { default: Provider } = await import(pathToFileURL(installed).href);

const cfg = JSON.parse(readFileSync(process.argv[2], 'utf8'));
const issuer = `http://127.0.0.1:${cfg.port}`;

function newKey() {
  const { privateKey } = generateKeyPairSync('rsa', { modulusLength: 2048 });
  return { ...privateKey.export({ format: 'jwk' }), kid: randomBytes(8).toString('hex'), alg: 'RS256', use: 'sig' };
}
let keys = existsSync(cfg.keys_file) ? JSON.parse(readFileSync(cfg.keys_file, 'utf8')) : [];
if (keys.length === 0 || cfg.rotate) keys = [newKey()];
writeFileSync(cfg.keys_file, JSON.stringify(keys), { mode: 0o600 });

const clients = new Map(cfg.clients.map((c) => [c.client_id, c]));
const provider = new Provider(issuer, {
  clients: cfg.clients.map((c) => ({
    client_id: c.client_id,
    client_secret: c.client_secret,
    grant_types: ['client_credentials'],
    redirect_uris: [],
    response_types: [],
    token_endpoint_auth_method: 'client_secret_post',
  })),
  jwks: { keys },
  features: {
    devInteractions: { enabled: false },
    clientCredentials: { enabled: true },
    resourceIndicators: {
      enabled: true,
      defaultResource: () => undefined,
      useGrantedResource: () => false,
      getResourceServerInfo: (_ctx, resource, client) => ({
        scope: 'niks3',
        audience: resource,
        accessTokenTTL: clients.get(client.clientId)?.ttl ?? 300,
        accessTokenFormat: 'jwt',
        jwt: { sign: { alg: 'RS256' } },
      }),
    },
  },
  extraTokenClaims: (_ctx, token) => clients.get(token.clientId)?.claims ?? {},
});

let jwksFetches = 0;
provider.use(async (ctx, next) => {
  if (ctx.path === '/test/jwks-count') {
    ctx.body = { count: jwksFetches };
    return;
  }
  if (ctx.path === '/jwks') jwksFetches += 1;
  await next();
});

provider.listen(cfg.port, '127.0.0.1', () => {
  console.log(`listening ${issuer}`);
});
