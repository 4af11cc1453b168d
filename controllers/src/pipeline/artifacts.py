# Moves a pipeline's artifacts, in the operator's model-cache image (Python
# and boto3); the first argument says what to do:
#
#   fetch   before a step's container starts: makes the directories its output
#           artifacts are written to (writable by any user), downloads its input
#           artifacts and checks each one's SHA-256 against the digest the
#           producing step recorded;
#   upload  once the step's container has exited 0: uploads its output
#           artifacts and reports each one's URI, SHA-256 and size in the
#           termination message, one `aleph-artifact-NAME=JSON` line each;
#   delete  when a run is deleted, or a pipeline with memoized steps: deletes
#           every object under each of its prefixes.
#
# The plan is the JSON of $ALEPH_ARTIFACTS (fetch, upload) or $ALEPH_BUCKET and
# $ALEPH_PREFIX (delete: prefixes separated by spaces or lines). A failure's one-line cause goes to
# /dev/termination-log, where the run's status and events read it.
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


def client():
    import boto3

    return boto3.client("s3")


def fetch():
    plan = json.loads(os.environ["ALEPH_ARTIFACTS"])
    for directory in plan.get("dirs", []):
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o777)
    inputs = plan.get("inputs", [])
    if not inputs:
        return
    s3 = client()
    for a in inputs:
        bucket, key = a["uri"][len("s3://"):].split("/", 1)
        os.makedirs(os.path.dirname(a["file"]), exist_ok=True)
        try:
            s3.download_file(bucket, key, a["file"])
        except Exception as e:  # the cause, whatever it is, goes to the status
            fail("downloading input %s (%s): %s" % (a["name"], a["uri"], e))
        digest = sha256(a["file"])
        if digest != a["sha256"]:
            fail(
                "input %s (%s) has SHA-256 %s, not the %s its step recorded: the object changed after it was uploaded"
                % (a["name"], a["uri"], digest, a["sha256"])
            )
        os.chmod(a["file"], 0o444)
        print("fetched %s: %s (%d bytes, sha256 %s)" % (a["name"], a["uri"], os.path.getsize(a["file"]), digest))


def upload():
    plan = json.loads(os.environ["ALEPH_ARTIFACTS"])
    s3 = client()
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


def delete():
    bucket = os.environ["ALEPH_BUCKET"]
    s3 = client()
    deleted = 0
    for prefix in os.environ["ALEPH_PREFIX"].split():
        try:
            for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
                keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
                for i in range(0, len(keys), 1000):
                    s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
                    deleted += len(keys[i:i + 1000])
        except Exception as e:  # the cause, whatever it is, goes to the owner's events
            fail("deleting s3://%s/%s: %s" % (bucket, prefix, e))
    print("deleted %d objects under %s in s3://%s" % (deleted, os.environ["ALEPH_PREFIX"].split(), bucket))


{"fetch": fetch, "upload": upload, "delete": delete}[sys.argv[1]]()
