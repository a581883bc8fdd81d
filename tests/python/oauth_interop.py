"""Interop check with OAuth2/JWT software not written here.

Obtains an access token from a running Scopecast broker with authlib's OAuth2 client using
private_key_jwt (RFC 7523), then verifies it with PyJWT against the broker's published JWK Set
(RFC 9068 checks: typ at+jwt, iss, aud, exp, client_id). Prints one JSON line; exits non-zero
on any failure. Run by tests/tests/interop_python.rs.
"""

import argparse
import json
import sys
import time

import jwt
import requests
from authlib.integrations.requests_client import OAuth2Session
from authlib.oauth2.rfc7523 import PrivateKeyJWT
from joserfc.jwk import ECKey, RSAKey


def main() -> int:
    parser = argparse.ArgumentParser()
    parser.add_argument("--url", required=True)
    parser.add_argument("--client-id", required=True)
    parser.add_argument("--private-key", required=True, help="PEM file")
    parser.add_argument("--kid", required=True)
    parser.add_argument("--alg", default="ES256")
    parser.add_argument("--scope")
    args = parser.parse_args()

    meta = requests.get(f"{args.url}/.well-known/oauth-authorization-server", timeout=10).json()
    token_endpoint = meta["token_endpoint"]
    with open(args.private_key, encoding="utf-8") as f:
        pem = f.read()
    # authlib reads a bare string as an RSA key; give it a key object of the right type.
    private_key = ECKey.import_key(pem) if args.alg.startswith("ES") else RSAKey.import_key(pem)

    # authlib's assertions live an hour by default; SMART Backend Services (and Scopecast)
    # accept at most 5 minutes.
    auth = PrivateKeyJWT(
        token_endpoint,
        claims={"exp": int(time.time()) + 240},
        headers={"kid": args.kid},
        alg=args.alg,
    )
    session = OAuth2Session(args.client_id, private_key, token_endpoint_auth_method=auth, scope=args.scope)
    token = session.fetch_token(token_endpoint, grant_type="client_credentials", timeout=10)
    access_token = token["access_token"]

    header = jwt.get_unverified_header(access_token)
    if header.get("typ") != "at+jwt":
        raise SystemExit(f"typ is {header.get('typ')!r}, not at+jwt")
    signing_key = jwt.PyJWKClient(meta["jwks_uri"]).get_signing_key_from_jwt(access_token)
    claims = jwt.decode(
        access_token,
        signing_key.key,
        algorithms=["ES256"],
        audience=meta["issuer"],
        issuer=meta["issuer"],
        options={"require": ["exp", "iat", "iss", "aud", "sub", "jti"]},
    )
    if claims["client_id"] != args.client_id or claims["sub"] != args.client_id:
        raise SystemExit("client_id or sub does not name the client")
    print(json.dumps({"ok": True, "kid": header["kid"], "scope": claims["scope"], "token_type": token["token_type"]}))
    return 0


if __name__ == "__main__":
    sys.exit(main())
