"""Fixtures for end-to-end tests: a real tansu broker per test, a moto S3 server, the
storepulse binary, and helpers to run it (its tables are read back in oracle.py)."""

import io
import json
import os
import pathlib
import shutil
import socket
import struct
import subprocess
import sys
import time

import fastavro
import pytest
from confluent_kafka import Producer

ROOT = pathlib.Path(__file__).resolve().parents[2]
STOREPULSE = os.environ.get("STOREPULSE_BIN", str(ROOT / "target" / "debug" / "storepulse"))
TANSU = os.environ.get("TANSU_BIN", "tansu")
TOPICS = ("clickstream", "orders", "logistics")


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for_port(port: int, timeout: float = 30.0) -> None:
    deadline = time.time() + timeout
    while time.time() < deadline:
        with socket.socket() as s:
            if s.connect_ex(("127.0.0.1", port)) == 0:
                return
        time.sleep(0.1)
    raise TimeoutError(f"nothing listens on port {port} after {timeout}s")


class Broker:
    def __init__(self, port: int, log: pathlib.Path):
        self.port = port
        self.address = f"127.0.0.1:{port}"
        self.url = f"tcp://127.0.0.1:{port}"
        self.log = log

    def create_topics(self, names=TOPICS, partitions: int = 4) -> None:
        for name in names:
            subprocess.run(
                [TANSU, "topic", "create", name, "--broker", self.url, "--partitions", str(partitions)],
                check=True,
                capture_output=True,
                timeout=30,
            )


@pytest.fixture
def broker(tmp_path):
    """A fresh tansu broker with in-memory storage, stopped after the test."""
    port = free_port()
    log = tmp_path / "tansu.log"
    with open(log, "wb") as out:
        proc = subprocess.Popen(
            [TANSU, "broker", "--listener-url", f"tcp://127.0.0.1:{port}",
             "--advertised-listener-url", f"tcp://127.0.0.1:{port}", "--storage-engine", "memory://tansu/"],
            stdout=out, stderr=subprocess.STDOUT,
        )
    try:
        wait_for_port(port)
        yield Broker(port, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


class MockBroker(Broker):
    """`storepulse broker`: librdkafka's mock cluster in its own process, topics made at start."""

    def __init__(self, address: str, log: pathlib.Path):
        super().__init__(int(address.rsplit(":", 1)[1]), log)

    def create_topics(self, names=TOPICS, partitions: int = 4) -> None:
        assert tuple(names) == TOPICS and partitions == 4, "the mock broker made only the default topics"


@pytest.fixture
def mock_broker(tmp_path):
    """librdkafka's mock cluster served by `storepulse broker`, stopped after the test."""
    log = tmp_path / "mock-broker.log"
    with open(log, "wb") as err:
        proc = subprocess.Popen([STOREPULSE, "broker"], stdout=subprocess.PIPE, stderr=err, text=True)
    try:
        address = proc.stdout.readline().strip()
        assert address, f"storepulse broker printed no address; see {log}"
        wait_for_port(int(address.rsplit(":", 1)[1]))
        yield MockBroker(address, log)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def storepulse(*args, timeout: float = 300, check: bool = True, env: dict | None = None) -> subprocess.CompletedProcess:
    """Runs the storepulse binary and returns its completed process (output captured); `env`
    adds environment variables."""
    result = subprocess.run([STOREPULSE, *map(str, args)], capture_output=True, text=True, timeout=timeout,
                            env={**os.environ, **(env or {})})
    if check and result.returncode != 0:
        raise AssertionError(f"storepulse {' '.join(map(str, args))} exited {result.returncode}\n{result.stderr[-4000:]}")
    return result


def write_config(path: pathlib.Path, broker: Broker, out: pathlib.Path | str, group: str, extra: str = "", topics=TOPICS,
                 table_format: str = "delta") -> pathlib.Path:
    path.write_text(
        f"""
[kafka]
brokers = "{broker.address}"
group_id = "{group}"

[topics]
clickstream = "{topics[0]}"
orders = "{topics[1]}"
logistics = "{topics[2]}"

[output]
dir = "{out}"
format = "{table_format}"

[checkpoint]
interval_secs = 5

[metrics]
listen_addr = "127.0.0.1:{free_port()}"
{extra}
"""
    )
    return path


class S3Server:
    """A moto S3-compatible server: endpoint, credentials and a boto3 client."""

    def __init__(self, port: int):
        import boto3

        self.endpoint = f"http://127.0.0.1:{port}"
        self.env = {"AWS_ENDPOINT": self.endpoint, "AWS_ALLOW_HTTP": "true", "AWS_ACCESS_KEY_ID": "storepulse",
                    "AWS_SECRET_ACCESS_KEY": "storepulse-secret", "AWS_DEFAULT_REGION": "us-east-1"}
        self.client = boto3.client("s3", endpoint_url=self.endpoint, aws_access_key_id="storepulse",
                                   aws_secret_access_key="storepulse-secret", region_name="us-east-1")

    def keys(self, bucket: str, prefix: str = "") -> list[str]:
        keys = []
        for page in self.client.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys.extend(item["Key"] for item in page.get("Contents", []))
        return sorted(keys)

    def download(self, bucket: str, prefix: str, into: pathlib.Path) -> pathlib.Path:
        """Copies every object under `prefix` into a local directory of the same layout."""
        for key in self.keys(bucket, prefix):
            target = into / key[len(prefix):].lstrip("/")
            target.parent.mkdir(parents=True, exist_ok=True)
            self.client.download_file(bucket, key, str(target))
        return into


@pytest.fixture
def s3(tmp_path):
    """A fresh moto S3 server (from PyPI, server mode), stopped after the test."""
    port = free_port()
    moto = pathlib.Path(sys.executable).parent / "moto_server"
    with open(tmp_path / "moto.log", "wb") as out:
        proc = subprocess.Popen([str(moto), "-H", "127.0.0.1", "-p", str(port)], stdout=out, stderr=subprocess.STDOUT)
    try:
        wait_for_port(port)
        yield S3Server(port)
    finally:
        proc.terminate()
        proc.wait(timeout=10)


def writer_schemas(tmp_path: pathlib.Path, ids: dict[str, int]) -> tuple[pathlib.Path, dict]:
    """A writer-schema directory holding the bundled schemas under `ids` (stream -> id), as an
    external producer registers them, and the schemas parsed by fastavro."""
    directory = tmp_path / "writer-schemas"
    directory.mkdir()
    parsed = {}
    for stream, schema_id in ids.items():
        source = ROOT / "schemas" / f"{stream}.avsc"
        shutil.copy(source, directory / f"{schema_id}-{stream}.avsc")
        parsed[stream] = fastavro.parse_schema(json.loads(source.read_text()))
    return directory, parsed


def produce_as_external_producer(address: str, prefix: str, events: pathlib.Path, parsed: dict,
                                 ids: dict[str, int]) -> set[str]:
    """Sends the generator's valid events from `events` to `<prefix>.<stream>` as a producer
    outside the project would (confluent-kafka, fastavro, Confluent framing with schema `ids`);
    returns the streams that had events."""
    producer = Producer({"bootstrap.servers": address, "linger.ms": 20})
    streams = set()
    with open(events) as lines:
        for sent, line in enumerate(lines):
            record = json.loads(line)
            if record["injected"] == "malformed":
                continue
            stream = record["topic"]
            streams.add(stream)
            datum = io.BytesIO()
            fastavro.schemaless_writer(datum, parsed[stream], record["event"])
            value = b"\x00" + struct.pack(">I", ids[stream]) + datum.getvalue()
            producer.produce(f"{prefix}.{stream}", key=record["key"].encode(), value=value)
            if sent % 5_000 == 0:
                producer.flush()
    assert producer.flush(30) == 0
    return streams
