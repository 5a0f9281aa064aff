variable "name" {
  description = "The cluster's name."
  type        = string
}

variable "bucket" {
  description = "An existing bucket to use (empty: create kvraft-<name>-<account id>)."
  type        = string
}

variable "account_id" {
  description = "The account id (makes the created bucket's name unique)."
  type        = string
}

variable "encryption" {
  description = "aws:kms (with kms_key_arn) or AES256."
  type        = string
}

variable "object_ownership" {
  description = "BucketOwnerEnforced or BucketOwnerPreferred."
  type        = string
}

variable "kms_key_arn" {
  description = "The key for aws:kms encryption."
  type        = string
}

variable "noncurrent_version_days" {
  description = "Days old versions are kept."
  type        = number
}

variable "force_destroy" {
  description = "Destroy the bucket even if it holds objects."
  type        = bool
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
}
