# Uploads a step's output artifacts once its container has exited 0, and
# reports each one's URI, SHA-256 and size in its termination message, one
# `aleph-artifact-NAME=JSON` line each, where the run's status reads them.
import hashlib
import json
import os
import sys


def fail(message):
    with open("/dev/termination-log", "w") as log:
        log.write(message)
    print(message, file=sys.stderr)
    sys.exit(1)


def sha256(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for chunk in iter(lambda: f.read(1 << 20), b""):
            digest.update(chunk)
    return digest.hexdigest()


def main():
    plan = json.loads(os.environ["ALEPH_ARTIFACTS"])
    import boto3

    s3 = boto3.client("s3")
    lines = []
    for a in plan["outputs"]:
        if not os.path.isfile(a["file"]):
            fail("the step wrote no file %s (artifact %s)" % (a["path"], a["name"]))
        digest = sha256(a["file"])
        size = os.path.getsize(a["file"])
        try:
            s3.upload_file(a["file"], a["bucket"], a["key"], ExtraArgs={"Metadata": {"sha256": digest}})
        except Exception as e:  # the cause, whatever it is, goes to the status
            fail("uploading artifact %s to s3://%s/%s: %s" % (a["name"], a["bucket"], a["key"], e))
        ref = {"name": a["name"], "uri": "s3://%s/%s" % (a["bucket"], a["key"]), "sha256": digest, "size": size}
        lines.append("aleph-artifact-%s=%s" % (a["name"], json.dumps(ref, separators=(",", ":"))))
        print("uploaded %s: %s (%d bytes, sha256 %s)" % (a["name"], ref["uri"], size, digest))
    with open("/dev/termination-log", "w") as log:
        log.write("\n".join(lines) + "\n")


main()
