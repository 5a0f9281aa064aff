# The backup bucket: private (every public access blocked, ACLs off where the provider
# allows), versioned, encrypted, old versions and abandoned uploads expired. An existing
# bucket given by name is used as it is.

locals {
  create = var.bucket == ""
  name   = local.create ? "kvraft-${var.name}-${var.account_id}" : var.bucket
}

data "aws_s3_bucket" "existing" {
  count  = local.create ? 0 : 1
  bucket = var.bucket
}

# Inline versioning, encryption and lifecycle: provider 3.x has no separate resources
# for them, and 5.x still accepts these arguments.
resource "aws_s3_bucket" "this" {
  # checkov:skip=CKV_AWS_144:Cross-region replication is the operator's choice; kvraft restores from this bucket and the snapshots are also on every replica.
  # checkov:skip=CKV_AWS_18:Access logging needs a second bucket of the account's logging design; CloudTrail data events are the usual audit path.
  # checkov:skip=CKV2_AWS_62:Nothing consumes bucket events; kvraft lists the bucket itself.
  count         = local.create ? 1 : 0
  bucket        = local.name
  force_destroy = var.force_destroy
  tags          = merge(var.tags, { Name = local.name })

  versioning {
    enabled = true
  }

  server_side_encryption_configuration {
    rule {
      apply_server_side_encryption_by_default {
        sse_algorithm     = var.encryption
        kms_master_key_id = var.encryption == "aws:kms" ? var.kms_key_arn : null
      }
      bucket_key_enabled = var.encryption == "aws:kms"
    }
  }

  lifecycle_rule {
    id                                     = "expire-old-versions"
    enabled                                = true
    abort_incomplete_multipart_upload_days = 7

    noncurrent_version_expiration {
      days = var.noncurrent_version_days
    }
  }
}

resource "aws_s3_bucket_public_access_block" "this" {
  count                   = local.create ? 1 : 0
  bucket                  = aws_s3_bucket.this[0].id
  block_public_acls       = true
  block_public_policy     = true
  ignore_public_acls      = true
  restrict_public_buckets = true
}

resource "aws_s3_bucket_ownership_controls" "this" {
  count  = local.create ? 1 : 0
  bucket = aws_s3_bucket.this[0].id

  rule {
    object_ownership = var.object_ownership
  }
  depends_on = [aws_s3_bucket_public_access_block.this]
}

# Only TLS, from anyone (the IAM role decides who).
resource "aws_s3_bucket_policy" "tls_only" {
  count  = local.create ? 1 : 0
  bucket = aws_s3_bucket.this[0].id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "DenyPlainHTTP"
      Effect    = "Deny"
      Principal = "*"
      Action    = "s3:*"
      Resource  = [aws_s3_bucket.this[0].arn, "${aws_s3_bucket.this[0].arn}/*"]
      Condition = { Bool = { "aws:SecureTransport" = "false" } }
    }]
  })
  depends_on = [aws_s3_bucket_public_access_block.this]
}
