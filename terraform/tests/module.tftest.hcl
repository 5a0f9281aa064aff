# terraform test: planning with a mocked AWS provider (no account, no moto). Variable
# validation, names, addresses and the spread of every group over the zones.

mock_provider "aws" {
  mock_data "aws_availability_zones" {
    defaults = { names = ["zone-a", "zone-b", "zone-c", "zone-d"] }
  }
  mock_data "aws_caller_identity" {
    defaults = { account_id = "123456789012" }
  }
  mock_data "aws_region" {
    defaults = { name = "eu-west-1" }
  }
  mock_data "aws_partition" {
    defaults = { partition = "aws" }
  }
  mock_data "aws_ami" {
    defaults = { id = "ami-0123456789abcdef0" }
  }
  mock_resource "aws_kms_key" {
    defaults = { arn = "arn:aws:kms:eu-west-1:123456789012:key/mock" }
  }
  mock_resource "aws_ssm_parameter" {
    defaults = { arn = "arn:aws:ssm:eu-west-1:123456789012:parameter/kvraft/mock" }
  }
}

variables {
  # the provider here is 3.39, which predates BucketOwnerEnforced
  bucket_object_ownership = "BucketOwnerPreferred"
  name                    = "prod"
  cluster_secret          = "0123456789abcdef0123456789abcdef"
  tls_ca_cert             = "-----BEGIN CERTIFICATE-----\nMIIB\n-----END CERTIFICATE-----\n"
  tls_ca_key              = "-----BEGIN PRIVATE KEY-----\nMIIB\n-----END PRIVATE KEY-----\n"
  data_groups = {
    "1" = { replicas = 3 }
    "2" = { replicas = 5 }
  }
}

run "sharded_layout" {
  command = plan

  assert {
    condition     = length(module.nodes.instance_ids) == 3 + 3 + 5
    error_message = "one instance per node slot: a controller of 3, groups of 3 and 5"
  }
  assert {
    condition     = sort(keys(output.nodes)) == sort(["1", "2", "3", "11", "12", "13", "21", "22", "23", "24", "25"])
    error_message = "node ids are 1..n for the controller and gid*10+1..n for data groups"
  }
  assert {
    condition     = length(distinct([for id in ["11", "12", "13"] : output.nodes[id].az])) == 3
    error_message = "a group of 3 spans 3 zones"
  }
  assert {
    condition     = [for id in ["21", "22", "23", "24", "25"] : output.nodes[id].az] == ["zone-a", "zone-b", "zone-c", "zone-a", "zone-b"]
    error_message = "a group of 5 over the first 3 zones goes round robin"
  }
  assert {
    condition     = output.nodes["12"].address == "10.42.1.22:7001" && output.nodes["1"].address == "10.42.0.11:7001"
    error_message = "addresses are fixed: host 10 + id in the zone's /24"
  }
  assert {
    condition     = output.controller_addresses == ["10.42.0.11:7001", "10.42.1.12:7001", "10.42.2.13:7001"]
    error_message = "the controller is nodes 1..3"
  }
  assert {
    condition     = output.group_addresses["2"]["25"] == "10.42.1.35:7001"
    error_message = "group 2's fifth replica wraps to the second zone"
  }
  assert {
    condition     = aws_ssm_parameter.secret.name == "/kvraft/prod/secret" && aws_ssm_parameter.secret.type == "SecureString"
    error_message = "the secret is a SecureString at /kvraft/<name>/secret"
  }
  assert {
    condition     = strcontains(output.shardctl, "shardctl --controller 10.42.0.11:7001,10.42.1.12:7001,10.42.2.13:7001")
    error_message = "the shardctl line names the controller"
  }
  assert {
    condition     = output.join_commands[0] == "shardctl --controller 10.42.0.11:7001,10.42.1.12:7001,10.42.2.13:7001 join 1 11=10.42.0.21:7001 12=10.42.1.22:7001 13=10.42.2.23:7001"
    error_message = "the join line lists group 1's members"
  }
}

run "colocated_controller" {
  command = plan

  variables {
    colocate_controller = true
    data_groups         = { "1" = { replicas = 3 } }
    availability_zones  = ["zone-b", "zone-c", "zone-a"]
  }

  assert {
    condition     = length(module.nodes.instance_ids) == 3
    error_message = "one group with the controller on it is three instances"
  }
  assert {
    condition     = output.nodes["11"].groups == tolist([0, 1]) && output.nodes["11"].az == "zone-b"
    error_message = "each node is a member of the controller and group 1, in the given zones"
  }
  assert {
    condition     = output.join_commands == ["shardctl --controller 10.42.0.21:7001,10.42.1.22:7001,10.42.2.23:7001 join 1 11=10.42.0.21:7001 12=10.42.1.22:7001 13=10.42.2.23:7001"]
    error_message = "the controller's addresses are group 1's"
  }
}

run "even_replicas_are_refused" {
  command = plan
  variables {
    data_groups = { "1" = { replicas = 4 } }
  }
  expect_failures = [var.data_groups]
}

run "too_many_replicas_are_refused" {
  command = plan
  variables {
    data_groups = { "1" = { replicas = 9 } }
  }
  expect_failures = [var.data_groups]
}

run "one_replica_is_refused" {
  command = plan
  variables {
    controller_replicas = 1
  }
  expect_failures = [var.controller_replicas]
}

run "bad_group_id_is_refused" {
  command = plan
  variables {
    data_groups = { "0" = { replicas = 3 } }
  }
  expect_failures = [var.data_groups]
}

run "bad_cidrs_are_refused" {
  command = plan
  variables {
    client_cidrs = ["10.0.0.0/33"]
  }
  expect_failures = [var.client_cidrs]
}

run "the_internet_is_refused" {
  command = plan
  variables {
    client_cidrs = ["0.0.0.0/0"]
  }
  expect_failures = [var.client_cidrs]
}

run "bad_vpc_cidr_is_refused" {
  command = plan
  variables {
    vpc_cidr = "10.0.0.0/8"
  }
  expect_failures = [var.vpc_cidr]
}

run "bad_name_is_refused" {
  command = plan
  variables {
    name = "Prod_Cluster"
  }
  expect_failures = [var.name]
}

run "short_secret_is_refused" {
  command = plan
  variables {
    cluster_secret = "short"
  }
  expect_failures = [var.cluster_secret]
}

run "bad_port_is_refused" {
  command = plan
  variables {
    port = 80
  }
  expect_failures = [var.port]
}
