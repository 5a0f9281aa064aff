output "bucket" {
  description = "The bucket's name."
  value       = local.create ? aws_s3_bucket.this[0].id : data.aws_s3_bucket.existing[0].id
}

output "bucket_arn" {
  description = "The bucket's ARN."
  value       = local.create ? aws_s3_bucket.this[0].arn : data.aws_s3_bucket.existing[0].arn
}
