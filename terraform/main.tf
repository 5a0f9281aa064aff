# kvraft on EC2: a VPC with a subnet per zone, a hardened backup bucket, an instance role
# scoped to this cluster, its secrets in SSM, and one instance per node slot with a data
# volume of its own. Each node's identity (id, address, volume) is fixed by its slot, so
# a replaced instance comes back as the same member of its groups.

data "aws_region" "current" {}
data "aws_caller_identity" "current" {}
data "aws_partition" "current" {}

data "aws_availability_zones" "available" {
  # checkov:skip=CKV_AWS_394:Only for trying the module out; production sets availability_zones (the README says so), which skips this data source.
  count = length(var.availability_zones) == 0 ? 1 : 0
  state = "available"

  filter {
    name   = "opt-in-status"
    values = ["opt-in-not-required"] # regular zones, not Local or Wavelength Zones
  }
}

locals {
  azs       = length(var.availability_zones) > 0 ? var.availability_zones : slice(sort(data.aws_availability_zones.available[0].names), 0, min(3, length(data.aws_availability_zones.available[0].names)))
  ssm_path  = "/kvraft/${var.name}"
  gids      = sort([for gid in keys(var.data_groups) : format("%02d", tonumber(gid))])
  first_gid = tonumber(local.gids[0])

  # One slot per node: controller nodes are ids 1..7, data group g's nodes g*10+1..7.
  # Replica r of every group is in zone r mod len(azs).
  controller_slots = var.colocate_controller ? {} : {
    for r in range(var.controller_replicas) : tostring(r + 1) => { replica = r, groups = [0] }
  }
  data_slots = merge([for gid in local.gids : {
    for r in range(var.data_groups[tostring(tonumber(gid))].replicas) :
    tostring(tonumber(gid) * 10 + r + 1) => {
      replica = r
      groups  = var.colocate_controller && tonumber(gid) == local.first_gid ? [0, tonumber(gid)] : [tonumber(gid)]
    }
  }]...)
  slots = merge(local.controller_slots, local.data_slots)

  addresses = {
    for id, s in local.slots : id => "${cidrhost(module.network.subnet_cidrs[s.replica % length(local.azs)], 10 + tonumber(id))}:${var.port}"
  }
  members = {
    for g in distinct(flatten([for s in values(local.slots) : s.groups])) :
    g => { for id, s in local.slots : id => local.addresses[id] if contains(s.groups, g) }
  }
  controller = [for id in sort(keys(local.members[0])) : local.addresses[id]]

  nodes = {
    for id, s in local.slots : id => {
      replica    = s.replica
      groups     = s.groups
      az         = local.azs[s.replica % length(local.azs)]
      subnet_id  = module.network.subnet_ids[s.replica % length(local.azs)]
      ip         = split(":", local.addresses[id])[0]
      peers      = merge([for g in s.groups : local.members[g]]...)
      controller = contains(s.groups, 0) ? [] : local.controller
    }
  }
  tags = merge({ "kvraft:cluster" = var.name }, var.tags)
}

resource "aws_kms_key" "cluster" {
  description             = "kvraft ${var.name}: data volumes, backups and SSM parameters"
  enable_key_rotation     = true
  deletion_window_in_days = 7
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Sid       = "AccountAdministers"
      Effect    = "Allow"
      Principal = { AWS = "arn:${data.aws_partition.current.partition}:iam::${data.aws_caller_identity.current.account_id}:root" }
      Action    = "kms:*"
      Resource  = "*"
    }]
  })
  tags = local.tags
}

resource "aws_kms_alias" "cluster" {
  name          = "alias/kvraft-${var.name}"
  target_key_id = aws_kms_key.cluster.key_id
}

module "network" {
  source             = "./modules/network"
  name               = var.name
  vpc_cidr           = var.vpc_cidr
  azs                = local.azs
  port               = var.port
  client_cidrs       = var.client_cidrs
  enable_nat_gateway = var.enable_nat_gateway
  tags               = local.tags
}

module "backups" {
  source                  = "./modules/backups"
  name                    = var.name
  bucket                  = var.backup_bucket
  account_id              = data.aws_caller_identity.current.account_id
  encryption              = var.bucket_encryption
  object_ownership        = var.bucket_object_ownership
  kms_key_arn             = aws_kms_key.cluster.arn
  noncurrent_version_days = var.noncurrent_version_days
  force_destroy           = var.force_destroy_bucket
  tags                    = local.tags
}

resource "aws_ssm_parameter" "secret" {
  name        = "${local.ssm_path}/secret"
  description = "kvraft ${var.name}: the cluster secret"
  type        = "SecureString"
  key_id      = aws_kms_key.cluster.arn
  value       = var.cluster_secret
  tags        = local.tags
}

resource "aws_ssm_parameter" "ca_cert" {
  name        = "${local.ssm_path}/tls/ca.crt"
  description = "kvraft ${var.name}: the cluster CA certificate"
  type        = "SecureString"
  key_id      = aws_kms_key.cluster.arn
  value       = var.tls_ca_cert
  tags        = local.tags
}

resource "aws_ssm_parameter" "ca_key" {
  name        = "${local.ssm_path}/tls/ca.key"
  description = "kvraft ${var.name}: the cluster CA key (nodes sign their own certificates)"
  type        = "SecureString"
  key_id      = aws_kms_key.cluster.arn
  value       = var.tls_ca_key
  tags        = local.tags
}

module "nodes" {
  source           = "./modules/nodes"
  name             = var.name
  nodes            = local.nodes
  vpc_id           = module.network.vpc_id
  security_group   = module.network.node_security_group_id
  instance_type    = var.instance_type
  ami_id           = var.ami_id
  root_volume_size = var.root_volume_size
  data_volume      = var.data_volume
  kms_key_arn      = aws_kms_key.cluster.arn
  port             = var.port
  region           = data.aws_region.current.name
  partition        = data.aws_partition.current.partition
  bucket           = module.backups.bucket
  backup_prefix    = var.backup_prefix
  ssm_path         = local.ssm_path
  ssm_parameter_arns = [
    aws_ssm_parameter.secret.arn, aws_ssm_parameter.ca_cert.arn, aws_ssm_parameter.ca_key.arn,
  ]
  kvraft_package = var.kvraft_package
  tags           = local.tags
}
