// A real OpenID Provider (npm `oidc-provider`) for skald's end-to-end login test.
//
// Listens on 127.0.0.1 (port from PORT, default 0 = any free port) and prints
// "listening on http://127.0.0.1:PORT" once ready. One client is registered:
// client_id "skald", secret "skald-secret", redirect URI from REDIRECT_URI, and as its
// post-logout redirect URI (RP-initiated logout, advertised as end_session_endpoint) the
// same origin's /ui/signed-out.
// devInteractions lets anyone log in with any name; the account "NAME" gets
// email NAME@example.test and skald_admin = (NAME === "admin").
//
// Test-only: POST /test/sign with a JSON claims object returns a JWT signed
// with the provider's own key (the one published at its jwks_uri), so the
// test can present ID tokens with a wrong audience, nonce or expiry.

import crypto from 'node:crypto';
import http from 'node:http';
import Provider from 'oidc-provider';

const redirectUri = process.env.REDIRECT_URI;
if (!redirectUri) {
  console.error('REDIRECT_URI is required');
  process.exit(2);
}

const { privateKey } = crypto.generateKeyPairSync('rsa', { modulusLength: 2048 });
const jwk = { ...privateKey.export({ format: 'jwk' }), kid: 'skald-test-key', alg: 'RS256', use: 'sig' };

const configuration = {
  clients: [
    {
      client_id: 'skald',
      client_secret: 'skald-secret',
      redirect_uris: [redirectUri],
      post_logout_redirect_uris: [new URL('/ui/signed-out', redirectUri).href],
      grant_types: ['authorization_code'],
      response_types: ['code'],
      token_endpoint_auth_method: 'client_secret_basic',
    },
  ],
  pkce: { required: () => true },
  features: { devInteractions: { enabled: true } },
  claims: {
    openid: ['sub'],
    email: ['email', 'email_verified'],
    profile: ['name', 'skald_admin'],
  },
  conformIdTokenClaims: false,
  jwks: { keys: [jwk] },
  cookies: { keys: ['skald-test-cookie-key'] },
  async findAccount(ctx, id) {
    return {
      accountId: id,
      async claims() {
        return { sub: id, email: `${id}@example.test`, email_verified: true, name: id, skald_admin: id === 'admin' };
      },
    };
  },
};

function b64url(input) {
  return Buffer.from(input).toString('base64url');
}

function sign(claims) {
  const header = { alg: 'RS256', kid: jwk.kid, typ: 'JWT' };
  const data = `${b64url(JSON.stringify(header))}.${b64url(JSON.stringify(claims))}`;
  const signature = crypto.sign('sha256', Buffer.from(data), privateKey).toString('base64url');
  return `${data}.${signature}`;
}

const server = http.createServer();
server.listen(Number(process.env.PORT || 0), '127.0.0.1', () => {
  const { port } = server.address();
  const issuer = `http://127.0.0.1:${port}`;
  const provider = new Provider(issuer, configuration);
  const handle = provider.callback();
  server.on('request', (req, res) => {
    if (req.method === 'POST' && req.url === '/test/sign') {
      let body = '';
      req.on('data', (chunk) => { body += chunk; });
      req.on('end', () => {
        res.writeHead(200, { 'content-type': 'text/plain' });
        res.end(sign(JSON.parse(body)));
      });
      return;
    }
    handle(req, res);
  });
  console.log(`listening on ${issuer}`);
});

process.on('SIGTERM', () => server.close(() => process.exit(0)));
