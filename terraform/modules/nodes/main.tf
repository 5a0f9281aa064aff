# One EC2 instance per node slot, each with its own encrypted gp3 data volume (a separate
# resource, so replacing the instance keeps the data) and a fixed private address, and
# one instance role that reaches only this cluster's objects and parameters.

data "aws_ami" "debian" {
  count       = var.ami_id == "" ? 1 : 0
  most_recent = true
  owners      = ["136693071363"] # Debian

  filter {
    name   = "name"
    values = ["debian-12-amd64-*"]
  }
  filter {
    name   = "architecture"
    values = ["x86_64"]
  }
}

locals {
  ami         = var.ami_id != "" ? var.ami_id : data.aws_ami.debian[0].id
  infra       = "${path.module}/../../../infra"
  data_device = "/dev/sdf"
  objects_arn = "arn:${var.partition}:s3:::${var.bucket}/${var.backup_prefix}/${var.name}/*"
}

# --- IAM: this cluster's objects and parameters, nothing else ------------------------

resource "aws_iam_role" "node" {
  name = "kvraft-${var.name}-node"
  assume_role_policy = jsonencode({
    Version = "2012-10-17"
    Statement = [{
      Effect    = "Allow"
      Principal = { Service = "ec2.amazonaws.com" }
      Action    = "sts:AssumeRole"
    }]
  })
  tags = var.tags
}

resource "aws_iam_role_policy" "node" {
  name = "kvraft-${var.name}-node"
  role = aws_iam_role.node.id
  policy = jsonencode({
    Version = "2012-10-17"
    Statement = [
      {
        Sid      = "BackupObjects"
        Effect   = "Allow"
        Action   = ["s3:GetObject", "s3:PutObject", "s3:DeleteObject", "s3:AbortMultipartUpload", "s3:ListMultipartUploadParts"]
        Resource = [local.objects_arn]
      },
      {
        Sid       = "ListBackupPrefix"
        Effect    = "Allow"
        Action    = ["s3:ListBucket", "s3:ListBucketMultipartUploads"]
        Resource  = ["arn:${var.partition}:s3:::${var.bucket}"]
        Condition = { StringLike = { "s3:prefix" = ["${var.backup_prefix}/${var.name}/*", "${var.backup_prefix}/${var.name}/"] } }
      },
      {
        Sid      = "ClusterParameters"
        Effect   = "Allow"
        Action   = ["ssm:GetParameter", "ssm:GetParameters"]
        Resource = var.ssm_parameter_arns
      },
      {
        Sid       = "ClusterKey"
        Effect    = "Allow"
        Action    = ["kms:Decrypt", "kms:GenerateDataKey"]
        Resource  = [var.kms_key_arn]
        Condition = { StringEquals = { "kms:ViaService" = ["ssm.${var.region}.amazonaws.com", "s3.${var.region}.amazonaws.com"] } }
      },
    ]
  })
}

resource "aws_iam_instance_profile" "node" {
  name = "kvraft-${var.name}-node"
  role = aws_iam_role.node.name
  tags = var.tags
}

# --- the data volumes ------------------------------------------------------------------

resource "aws_ebs_volume" "data" {
  for_each          = var.nodes
  availability_zone = each.value.az
  size              = var.data_volume.size
  type              = "gp3"
  iops              = var.data_volume.iops
  throughput        = var.data_volume.throughput
  encrypted         = true
  kms_key_id        = var.kms_key_arn
  tags              = merge(var.tags, { Name = "kvraft-${var.name}-node-${each.key}-data", "kvraft:node" = each.key })
}

# --- the instances -----------------------------------------------------------------------

locals {
  config = {
    for id, n in var.nodes : id => templatefile("${local.infra}/node.toml.tftpl", {
      id         = id
      listen     = "${n.ip}:${var.port}"
      groups     = n.groups
      peers      = n.peers
      controller = n.controller
      bucket     = var.bucket
      prefix     = var.backup_prefix
      cluster    = var.name
      region     = var.region
    })
  }
  unit = {
    for id, n in var.nodes : id => templatefile("${local.infra}/kvraft.service.tftpl", {
      id       = id
      host     = n.ip
      ssm_path = var.ssm_path
      region   = var.region
    })
  }
  user_data = {
    for id, n in var.nodes : id => templatefile("${local.infra}/cloud-init.yaml.tftpl", {
      id             = id
      volume_id      = aws_ebs_volume.data[id].id
      config         = local.config[id]
      unit           = local.unit[id]
      mount_script   = file("${local.infra}/kvraft-mount-data.sh")
      install_script = file("${local.infra}/kvraft-install.sh")
      package        = var.kvraft_package
    })
  }
}

resource "aws_instance" "node" {
  for_each                    = var.nodes
  ami                         = local.ami
  instance_type               = var.instance_type
  availability_zone           = each.value.az
  subnet_id                   = each.value.subnet_id
  private_ip                  = each.value.ip
  vpc_security_group_ids      = [var.security_group]
  associate_public_ip_address = false
  iam_instance_profile        = aws_iam_instance_profile.node.name
  ebs_optimized               = true
  monitoring                  = true
  user_data                   = local.user_data[each.key]

  metadata_options {
    http_endpoint               = "enabled"
    http_tokens                 = "required"
    http_put_response_hop_limit = 1
  }

  root_block_device {
    volume_type = "gp3"
    volume_size = var.root_volume_size
    encrypted   = true
    kms_key_id  = var.kms_key_arn
  }

  tags = merge(var.tags, {
    Name            = "kvraft-${var.name}-node-${each.key}"
    "kvraft:node"   = each.key
    "kvraft:groups" = join(",", [for g in each.value.groups : tostring(g)])
  })

  lifecycle {
    # A new AMI or new user data (another kvraft_package, another group layout) is a
    # rolling change that the runbook makes one node at a time (-replace), never a
    # plan that replaces or restarts every instance at once.
    ignore_changes = [ami, user_data]
  }
}

resource "aws_volume_attachment" "data" {
  for_each    = var.nodes
  device_name = local.data_device
  volume_id   = aws_ebs_volume.data[each.key].id
  instance_id = aws_instance.node[each.key].id
  # No detach call on destroy: terminating the instance detaches the volume after
  # systemd has stopped kvraft (SIGTERM: a clean hand-off) and unmounted it. A forced
  # detach from a running instance would pull a mounted disk.
  skip_destroy = true
}
