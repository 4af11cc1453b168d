# Deletes a run's artifacts (every object under its prefix) when the run is
# deleted and its pipeline's artifactStore.retention is Delete.
import os
import sys


def main():
    import boto3

    bucket, prefix = os.environ["ALEPH_BUCKET"], os.environ["ALEPH_PREFIX"]
    s3 = boto3.client("s3")
    deleted = 0
    try:
        for page in s3.get_paginator("list_objects_v2").paginate(Bucket=bucket, Prefix=prefix):
            keys = [{"Key": o["Key"]} for o in page.get("Contents", [])]
            for i in range(0, len(keys), 1000):
                s3.delete_objects(Bucket=bucket, Delete={"Objects": keys[i:i + 1000], "Quiet": True})
                deleted += len(keys[i:i + 1000])
    except Exception as e:  # the cause, whatever it is, goes to the run's events
        message = "deleting s3://%s/%s: %s" % (bucket, prefix, e)
        with open("/dev/termination-log", "w") as log:
            log.write(message)
        print(message, file=sys.stderr)
        sys.exit(1)
    print("deleted %d objects under s3://%s/%s" % (deleted, bucket, prefix))


main()
