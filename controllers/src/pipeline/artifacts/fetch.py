# Prepares a step's artifacts before its container starts: makes the
# directories its output artifacts are written to (writable by any user),
# downloads its input artifacts and checks each one's SHA-256 against the
# digest the producing step recorded. Its one-line cause of failure goes to
# /dev/termination-log, where the run's status reads it.
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
    for directory in plan.get("dirs", []):
        os.makedirs(directory, exist_ok=True)
        os.chmod(directory, 0o777)
    inputs = plan.get("inputs", [])
    if not inputs:
        return
    import boto3

    s3 = boto3.client("s3")
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


main()
