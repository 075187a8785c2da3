"""The schema registry over HTTPS with basic authentication, as managed registries are: a local
TLS server signed by a throwaway CA serves the registry's REST contract and checks the
credentials. storepulse, trusting that CA through `codec.schema_registry_ca_file` and reading
the password from the environment, decodes the same events as from the same registry over
plain HTTP; the password appears in no log line and no metric."""

import base64
import http.server
import json
import os
import re
import ssl
import subprocess
import threading
import time
import urllib.request

from conftest import STOREPULSE, produce_as_external_producer, storepulse, write_config, writer_schemas
from oracle import TABLES, data_files, snapshot

TOPICS = ("tls.clickstream", "tls.orders", "tls.logistics")
SCHEMA_IDS = {"clickstream": 51, "orders": 52, "logistics": 53}
USER, PASSWORD = "storepulse", "s3cr3t-registry-password"


def certificates(directory):
    """A CA, and a certificate for 127.0.0.1 and localhost that it signed."""
    def openssl(*args):
        subprocess.run(["openssl", *args], check=True, capture_output=True, cwd=directory)
    openssl("req", "-x509", "-newkey", "rsa:2048", "-nodes", "-keyout", "ca.key", "-out", "ca.pem", "-days", "2",
            "-subj", "/CN=storepulse test CA")
    openssl("req", "-newkey", "rsa:2048", "-nodes", "-keyout", "server.key", "-out", "server.csr", "-subj", "/CN=localhost")
    (directory / "san.ext").write_text("subjectAltName=DNS:localhost,IP:127.0.0.1\n")
    openssl("x509", "-req", "-in", "server.csr", "-CA", "ca.pem", "-CAkey", "ca.key", "-CAcreateserial",
            "-out", "server.pem", "-days", "2", "-extfile", "san.ext")
    return directory / "ca.pem", directory / "server.pem", directory / "server.key"


def serve_registry(schemas: dict[int, str], tls=None) -> tuple[http.server.ThreadingHTTPServer, dict]:
    """GET /schemas/ids/{id}: over plain HTTP to anyone, or with `tls` (certificate and key
    files) to basic-authenticated clients only."""
    seen = {"authorized": 0, "refused": 0}
    expected = "Basic " + base64.b64encode(f"{USER}:{PASSWORD}".encode()).decode() if tls else None

    class Handler(http.server.BaseHTTPRequestHandler):
        def do_GET(self):
            if expected and self.headers.get("Authorization") != expected:
                seen["refused"] += 1
                self.send_response(401)
                self.end_headers()
                return
            seen["authorized"] += 1
            match = re.fullmatch(r"/schemas/ids/(\d+)", self.path)
            schema = schemas.get(int(match.group(1))) if match else None
            body = json.dumps({"schema": schema} if schema else {"error_code": 40403}).encode()
            self.send_response(200 if schema else 404)
            self.send_header("Content-Type", "application/vnd.schemaregistry.v1+json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    if tls:
        context = ssl.SSLContext(ssl.PROTOCOL_TLS_SERVER)
        context.load_cert_chain(*tls)
        server.socket = context.wrap_socket(server.socket, server_side=True)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    return server, seen


def test_registry_over_tls_with_basic_auth_decodes_the_same_events_and_never_shows_the_password(broker, tmp_path):
    broker.create_topics()
    broker.create_topics(TOPICS)
    events = tmp_path / "events.jsonl"
    storepulse("generate", "--brokers", broker.address, "--count", 6_000, "--seed", 9, "--events-file", events)
    schemas_dir, parsed = writer_schemas(tmp_path, SCHEMA_IDS)
    streams = produce_as_external_producer(broker.address, "tls", events, parsed, SCHEMA_IDS)

    ca, cert, key = certificates(tmp_path)
    schemas = {SCHEMA_IDS[p.name.split("-", 1)[1][:-5]]: p.read_text() for p in schemas_dir.glob("*.avsc")}
    server, seen = serve_registry(schemas, (cert, key))
    plain_server, _ = serve_registry(schemas)
    try:
        plain_out, tls_out = tmp_path / "plain", tmp_path / "tls"
        storepulse("run", "--bounded", "--config", write_config(
            tmp_path / "plain.toml", broker, plain_out, "e2e-plain-registry", topics=TOPICS,
            extra=f'\n[codec]\nschema_registry_url = "http://127.0.0.1:{plain_server.server_address[1]}"\n'))
        config = write_config(
            tmp_path / "tls.toml", broker, tls_out, "e2e-tls-registry", topics=TOPICS,
            extra=f'\n[codec]\nschema_registry_url = "https://127.0.0.1:{server.server_address[1]}"\n'
                  f'schema_registry_ca_file = "{ca}"\nschema_registry_username = "{USER}"\n'
                  'schema_registry_password = "env:TEST_REGISTRY_PASSWORD"\n')
        metrics_addr = config.read_text().split('listen_addr = "')[1].split('"')[0]
        with open(tmp_path / "tls.log", "w") as log:
            proc = subprocess.Popen([STOREPULSE, "run", "--bounded", "--config", str(config)], stdout=log,
                                    stderr=subprocess.STDOUT, env={**os.environ,
                                                                   "TEST_REGISTRY_PASSWORD": PASSWORD})
            scraped = []
            while proc.poll() is None:
                try:
                    with urllib.request.urlopen(f"http://{metrics_addr}/metrics", timeout=2) as response:
                        scraped.append(response.read().decode())
                except OSError:
                    pass
                time.sleep(0.2)
        assert proc.returncode == 0, (tmp_path / "tls.log").read_text()[-3000:]
    finally:
        server.shutdown()
        plain_server.shutdown()
    logs = (tmp_path / "tls.log").read_text()
    assert scraped, "the endpoint was never scraped during the run"
    assert PASSWORD not in logs and all(PASSWORD not in text for text in scraped)
    # One lookup per schema id in use: the schemas are cached.
    assert seen["authorized"] == len(streams) and seen["refused"] == 0, (seen, streams)

    assert not data_files(tls_out, "dead_letters"), "events fetched their schemas over TLS"
    plain, tls = snapshot(plain_out), snapshot(tls_out)
    assert plain == tls, [name for name in TABLES if plain[name] != tls[name]]
    compared = sum(len(rows) for rows in plain.values())
    assert compared > 500
    print(f"{compared} rows equal; registry answered {seen['authorized']} authenticated requests over TLS")
