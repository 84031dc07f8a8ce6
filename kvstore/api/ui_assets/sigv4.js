// kvstore /ui: AWS Signature Version 4 for the page's own GETs, with the browser's WebCrypto
// (crypto.subtle: HMAC-SHA256 and SHA-256). No library. The secret key never leaves this tab:
// only the signature derived from it is sent, in the Authorization header.
// crypto.subtle exists only in secure contexts (https, or http on localhost / 127.0.0.1).
"use strict";

const SigV4 = (() => {
  const enc = new TextEncoder();
  // sha256 of an empty body: the page's GETs have none, and the server checks the hash it is told
  const EMPTY_SHA256 = "e3b0c44298fc1c149afbf4c8996fb92427ae41e4649b934ca495991b7852b855";
  const SIGNED = "host;x-amz-content-sha256;x-amz-date";
  let cached = null; // {secret, date, region, key}: the signing key of one day

  function available() {
    return Boolean(window.isSecureContext && window.crypto && window.crypto.subtle);
  }

  function hex(buf) {
    return Array.from(new Uint8Array(buf), (b) => b.toString(16).padStart(2, "0")).join("");
  }

  async function sha256Hex(text) {
    return hex(await crypto.subtle.digest("SHA-256", enc.encode(text)));
  }

  async function hmac(key, text) {
    const k = await crypto.subtle.importKey("raw", key, { name: "HMAC", hash: "SHA-256" },
                                            false, ["sign"]);
    return new Uint8Array(await crypto.subtle.sign("HMAC", k, enc.encode(text)));
  }

  async function signingKey(secret, date, region) {
    if (cached && cached.secret === secret && cached.date === date && cached.region === region) {
      return cached.key;
    }
    let k = await hmac(enc.encode("AWS4" + secret), date);
    k = await hmac(k, region);
    k = await hmac(k, "s3");
    k = await hmac(k, "aws4_request");
    cached = { secret, date, region, key: k };
    return k;
  }

  // "20261202T054900Z" for a Date
  function amzDate(when) {
    return when.toISOString().replace(/[-:]/g, "").replace(/\.\d{3}/, "");
  }

  // Headers for a GET of `path` (no query) on this page's own origin. `host` is what the
  // browser puts in the Host header: location.host (the port only when it is not the default).
  async function headers(creds, region, path, host, when) {
    const stamp = amzDate(when), date = stamp.slice(0, 8);
    const canonical = ["GET", path, "",
      "host:" + host + "\n" + "x-amz-content-sha256:" + EMPTY_SHA256 + "\n" +
      "x-amz-date:" + stamp + "\n", SIGNED, EMPTY_SHA256].join("\n");
    const scope = date + "/" + region + "/s3/aws4_request";
    const toSign = ["AWS4-HMAC-SHA256", stamp, scope, await sha256Hex(canonical)].join("\n");
    const signature = hex(await hmac(await signingKey(creds.secret, date, region), toSign));
    return {
      "x-amz-date": stamp,
      "x-amz-content-sha256": EMPTY_SHA256,
      "authorization": "AWS4-HMAC-SHA256 Credential=" + creds.accessKey + "/" + scope +
        ", SignedHeaders=" + SIGNED + ", Signature=" + signature,
    };
  }

  return { available, headers };
})();
