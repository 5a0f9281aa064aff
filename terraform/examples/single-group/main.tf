terraform {
  required_version = ">= 1.7"

  required_providers {
    aws = {
      source  = "hashicorp/aws"
      version = ">= 3.39, < 6.0"
    }
  }
}

provider "aws" {
  region = var.region
}

module "kvraft" {
  source = "../.."

  name = var.name
  # Three instances: each a member of the controller (group 0) and of data group 1.
  colocate_controller = true
  data_groups         = { "1" = { replicas = 3 } }

  cluster_secret          = var.cluster_secret
  tls_ca_cert             = file("${var.certs_dir}/ca.crt")
  tls_ca_key              = file("${var.certs_dir}/ca.key")
  client_cidrs            = var.client_cidrs
  ami_id                  = var.ami_id
  kvraft_package          = var.kvraft_package
  bucket_object_ownership = var.bucket_object_ownership
  force_destroy_bucket    = var.force_destroy_bucket
}
