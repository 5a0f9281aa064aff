variable "name" {
  description = "The cluster's name (prefixes resource names)."
  type        = string
}

variable "vpc_cidr" {
  description = "The VPC's CIDR (/16 to /20): /24s 0-5 for nodes, 8-13 for endpoints, the last for NAT."
  type        = string
}

variable "azs" {
  description = "Availability zones: a node subnet and an endpoint subnet (/24s) in each."
  type        = list(string)

  validation {
    condition     = length(var.azs) >= 1 && length(var.azs) <= 6
    error_message = "azs must list 1 to 6 zones."
  }
}

variable "port" {
  description = "The nodes' client and peer port."
  type        = number
}

variable "client_cidrs" {
  description = "CIDRs allowed to the client port."
  type        = list(string)
}

variable "enable_nat_gateway" {
  description = "A NAT gateway (in a public subnet of the first zone) for the nodes' egress to the internet."
  type        = bool
}

variable "tags" {
  description = "Tags for every resource."
  type        = map(string)
}
