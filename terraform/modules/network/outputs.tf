output "vpc_id" {
  description = "The VPC."
  value       = aws_vpc.this.id
}

output "subnet_ids" {
  description = "The private subnets, one per zone, in the order of var.azs."
  value       = aws_subnet.private[*].id
}

output "subnet_cidrs" {
  description = "Their CIDRs (computed, so that node addresses are known at plan time)."
  value       = [for i in range(length(var.azs)) : cidrsubnet(var.vpc_cidr, local.newbits, i)]
}

output "node_security_group_id" {
  description = "The nodes' security group."
  value       = aws_security_group.nodes.id
}
