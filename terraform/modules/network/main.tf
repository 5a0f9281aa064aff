# The VPC: one private subnet per zone for the nodes (no public addresses), a gateway
# endpoint for S3 and interface endpoints for SSM so that backups and secrets never
# leave AWS's network, and an optional NAT gateway for installing from PyPI.

locals {
  newbits = 24 - tonumber(split("/", var.vpc_cidr)[1])
}

resource "aws_vpc" "this" {
  # checkov:skip=CKV2_AWS_11:Flow logs go to the account's central log destination, which this module does not own; attach one to the vpc_id output.
  cidr_block           = var.vpc_cidr
  enable_dns_support   = true
  enable_dns_hostnames = true
  tags                 = merge(var.tags, { Name = "kvraft-${var.name}" })
}

# No rules: nothing may use the VPC's default security group.
resource "aws_default_security_group" "default" {
  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "kvraft-${var.name}-default-unused" })
}

resource "aws_subnet" "private" {
  count                   = length(var.azs)
  vpc_id                  = aws_vpc.this.id
  availability_zone       = var.azs[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, local.newbits, count.index)
  map_public_ip_on_launch = false
  tags                    = merge(var.tags, { Name = "kvraft-${var.name}-${var.azs[count.index]}" })
}

# The interface endpoints' addresses are AWS's choice: they get subnets of their own,
# so they can never take a node's fixed address.
resource "aws_subnet" "endpoints" {
  count                   = length(var.azs)
  vpc_id                  = aws_vpc.this.id
  availability_zone       = var.azs[count.index]
  cidr_block              = cidrsubnet(var.vpc_cidr, local.newbits, 8 + count.index)
  map_public_ip_on_launch = false
  tags                    = merge(var.tags, { Name = "kvraft-${var.name}-endpoints-${var.azs[count.index]}" })
}

resource "aws_route_table" "private" {
  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "kvraft-${var.name}-private" })
}

resource "aws_route_table_association" "private" {
  count          = length(var.azs)
  subnet_id      = aws_subnet.private[count.index].id
  route_table_id = aws_route_table.private.id
}

# --- egress to the internet (optional) ---------------------------------------------

resource "aws_internet_gateway" "this" {
  count  = var.enable_nat_gateway ? 1 : 0
  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "kvraft-${var.name}" })
}

resource "aws_subnet" "public" {
  count                   = var.enable_nat_gateway ? 1 : 0
  vpc_id                  = aws_vpc.this.id
  availability_zone       = var.azs[0]
  cidr_block              = cidrsubnet(var.vpc_cidr, local.newbits, pow(2, local.newbits) - 1) # the last /24
  map_public_ip_on_launch = false
  tags                    = merge(var.tags, { Name = "kvraft-${var.name}-nat" })
}

resource "aws_route_table" "public" {
  count  = var.enable_nat_gateway ? 1 : 0
  vpc_id = aws_vpc.this.id
  tags   = merge(var.tags, { Name = "kvraft-${var.name}-public" })
}

resource "aws_route" "public_internet" {
  count                  = var.enable_nat_gateway ? 1 : 0
  route_table_id         = aws_route_table.public[0].id
  destination_cidr_block = "0.0.0.0/0"
  gateway_id             = aws_internet_gateway.this[0].id
}

resource "aws_route_table_association" "public" {
  count          = var.enable_nat_gateway ? 1 : 0
  subnet_id      = aws_subnet.public[0].id
  route_table_id = aws_route_table.public[0].id
}

resource "aws_eip" "nat" {
  count = var.enable_nat_gateway ? 1 : 0
  vpc   = true
  tags  = merge(var.tags, { Name = "kvraft-${var.name}-nat" })
}

resource "aws_nat_gateway" "this" {
  count         = var.enable_nat_gateway ? 1 : 0
  allocation_id = aws_eip.nat[0].id
  subnet_id     = aws_subnet.public[0].id
  tags          = merge(var.tags, { Name = "kvraft-${var.name}" })
  depends_on    = [aws_internet_gateway.this]
}

resource "aws_route" "private_nat" {
  count                  = var.enable_nat_gateway ? 1 : 0
  route_table_id         = aws_route_table.private.id
  destination_cidr_block = "0.0.0.0/0"
  nat_gateway_id         = aws_nat_gateway.this[0].id
}

# --- AWS services without the internet ------------------------------------------------

data "aws_region" "current" {}

resource "aws_vpc_endpoint" "s3" {
  vpc_id            = aws_vpc.this.id
  service_name      = "com.amazonaws.${data.aws_region.current.name}.s3"
  vpc_endpoint_type = "Gateway"
  route_table_ids   = [aws_route_table.private.id]
  tags              = merge(var.tags, { Name = "kvraft-${var.name}-s3" })
}

resource "aws_security_group" "endpoints" {
  name        = "kvraft-${var.name}-endpoints"
  description = "kvraft ${var.name}: HTTPS from the nodes to the VPC's SSM endpoints"
  vpc_id      = aws_vpc.this.id
  tags        = merge(var.tags, { Name = "kvraft-${var.name}-endpoints" })
}

resource "aws_security_group_rule" "endpoints_from_nodes" {
  type                     = "ingress"
  description              = "HTTPS from the kvraft nodes"
  security_group_id        = aws_security_group.endpoints.id
  from_port                = 443
  to_port                  = 443
  protocol                 = "tcp"
  source_security_group_id = aws_security_group.nodes.id
}

resource "aws_vpc_endpoint" "interface" {
  for_each            = toset(["ssm", "kms"])
  vpc_id              = aws_vpc.this.id
  service_name        = "com.amazonaws.${data.aws_region.current.name}.${each.key}"
  vpc_endpoint_type   = "Interface"
  subnet_ids          = aws_subnet.endpoints[*].id
  security_group_ids  = [aws_security_group.endpoints.id]
  private_dns_enabled = true
  tags                = merge(var.tags, { Name = "kvraft-${var.name}-${each.key}" })
}

# --- the nodes' security group -------------------------------------------------------

resource "aws_security_group" "nodes" {
  # checkov:skip=CKV2_AWS_5:Attached to every instance by the nodes module (vpc_security_group_ids), which checkov does not follow across modules.
  name        = "kvraft-${var.name}-nodes"
  description = "kvraft ${var.name}: the nodes (peers and clients on one TLS port)"
  vpc_id      = aws_vpc.this.id
  tags        = merge(var.tags, { Name = "kvraft-${var.name}-nodes" })
}

resource "aws_security_group_rule" "peers_in" {
  type              = "ingress"
  description       = "kvraft peers and clients inside the cluster"
  security_group_id = aws_security_group.nodes.id
  from_port         = var.port
  to_port           = var.port
  protocol          = "tcp"
  self              = true
}

resource "aws_security_group_rule" "clients_in" {
  count             = length(var.client_cidrs) > 0 ? 1 : 0
  type              = "ingress"
  description       = "kvraft clients from the given CIDRs"
  security_group_id = aws_security_group.nodes.id
  from_port         = var.port
  to_port           = var.port
  protocol          = "tcp"
  cidr_blocks       = var.client_cidrs
}

resource "aws_security_group_rule" "peers_out" {
  type              = "egress"
  description       = "kvraft peers"
  security_group_id = aws_security_group.nodes.id
  from_port         = var.port
  to_port           = var.port
  protocol          = "tcp"
  self              = true
}

resource "aws_security_group_rule" "https_out" {
  type              = "egress"
  description       = "HTTPS: S3, SSM and KMS (and PyPI through the NAT gateway)"
  security_group_id = aws_security_group.nodes.id
  from_port         = 443
  to_port           = 443
  protocol          = "tcp"
  cidr_blocks       = ["0.0.0.0/0"]
}
