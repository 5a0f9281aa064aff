"""Storage backends for kvraft (the S3 snapshot store is ``kvraft.storage.s3``)."""
