variable "region" {
  description = "AWS region."
  type        = string
  default     = "us-east-1"
}

variable "name" {
  description = "The cluster's name."
  type        = string
  default     = "demo-sharded"
}

variable "certs_dir" {
  description = "Where `kvraft certs init --dir DIR` wrote ca.crt and ca.key."
  type        = string
}

variable "cluster_secret" {
  description = "The cluster secret (at least 32 characters), e.g. from `openssl rand -hex 32`."
  type        = string
  sensitive   = true
}

variable "client_cidrs" {
  description = "CIDRs allowed to the client port."
  type        = list(string)
  default     = []
}

variable "ami_id" {
  description = "AMI (empty: the newest Debian 12)."
  type        = string
  default     = ""
}

variable "kvraft_package" {
  description = "What the nodes pip install."
  type        = string
  default     = "kvraft"
}

variable "bucket_object_ownership" {
  description = "BucketOwnerEnforced (provider >= 3.66) or BucketOwnerPreferred (3.39)."
  type        = string
  default     = "BucketOwnerEnforced"
}

variable "force_destroy_bucket" {
  description = "Let destroy remove a bucket that holds backups (test clusters)."
  type        = bool
  default     = false
}
