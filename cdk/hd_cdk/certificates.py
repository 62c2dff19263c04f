"""Certificate renewal (issue 21, item 6): a rotation Lambda for the engine's TLS secret, issuing from ACM Private CA.

Created only when context `hd:privateCaArn` names the private CA; without one, a certificate from another CA is
imported by writing a new version of the secret (README), and either way the hosts serve the new version to new
connections within minutes and the CertificateDaysToExpiry alarm fires 30 days before the served one expires.

Security decisions visible here:
- the function runs in the isolated subnets and reaches ACM Private CA through its own interface endpoint, which
  accepts 443 from the control-plane Lambdas' security group only;
- its role may read, write and restage exactly the TLS secret, issue and fetch certificates from exactly that CA
  with the end-entity template only, and use the data key only through Secrets Manager;
- Secrets Manager alone may invoke it, for this account; the rotation runs every `ROTATE_AFTER_DAYS`, so a
  90-day certificate is renewed a month before the expiry alarm would speak.
"""

from __future__ import annotations

import re
from collections.abc import Sequence
from typing import Final

from aws_cdk import Aws, Duration, RemovalPolicy
from aws_cdk import aws_ec2 as ec2
from aws_cdk import aws_iam as iam
from aws_cdk import aws_kms as kms
from aws_cdk import aws_lambda as lambda_
from aws_cdk import aws_logs as logs
from aws_cdk import aws_secretsmanager as secretsmanager
from constructs import Construct

from hd_cdk import packaging
from hd_cdk.nag import acknowledge

CONTEXT_PRIVATE_CA_ARN: Final = "hd:privateCaArn"
ROTATION_HANDLER: Final = "functions.cert_rotation.handler.lambda_handler"
END_ENTITY_TEMPLATE: Final = "arn:aws:acm-pca:::template/EndEntityCertificate/V1"
VALIDITY_DAYS: Final = 90
ROTATE_AFTER_DAYS: Final = 60
CA_ARN_PATTERN: Final = r"^arn:aws[a-z-]*:acm-pca:[a-z0-9-]+:\d{12}:certificate-authority/[0-9a-f-]{36}$"
_LOG_RETENTION: Final = logs.RetentionDays.ONE_YEAR
_L1_REASON: Final = ("Pinned to the control plane's Python (packaging.LAMBDA_RUNTIME): its layers are built from "
                     "wheels for that version, so runtime and layers move together in a deliberate upgrade")


def private_ca_arn(scope: Construct) -> str | None:
    """Context `hd:privateCaArn`, checked; None when not set (no rotation function: the import path)."""
    value = scope.node.try_get_context(CONTEXT_PRIVATE_CA_ARN)
    if not value:
        return None
    if not re.fullmatch(CA_ARN_PATTERN, str(value)):
        raise ValueError(f"context {CONTEXT_PRIVATE_CA_ARN}: {value!r} is not an ACM Private CA ARN "
                         "(arn:aws:acm-pca:<region>:<account>:certificate-authority/<id>)")
    return str(value)


class CertificateRotation(Construct):
    """The rotation function, its ACM PCA endpoint and the rotation schedule of the TLS secret.

    Attributes: `function`, `role`, `policy`, `endpoint`, `schedule`, `log_group`.
    """

    def __init__(self, scope: Construct, construct_id: str, *, secret_arn: str, ca_arn: str, data_key: kms.IKey,
                 vpc: ec2.IVpc, subnets: ec2.SubnetSelection, lambda_sg: ec2.ISecurityGroup,
                 endpoint_sg: ec2.ISecurityGroup, logs_key: kms.IKey, code: lambda_.Code,
                 layers: Sequence[lambda_.ILayerVersion]) -> None:
        super().__init__(scope, construct_id)
        self.endpoint = vpc.add_interface_endpoint(
            "AcmPcaEndpoint", service=ec2.InterfaceVpcEndpointAwsService.PRIVATE_CERTIFICATE_AUTHORITY,
            subnets=subnets, security_groups=[endpoint_sg], private_dns_enabled=True, open=False)
        self.log_group = logs.LogGroup(self, "Logs", encryption_key=logs_key, retention=_LOG_RETENTION,
                                       removal_policy=RemovalPolicy.RETAIN)
        self.role = iam.Role(self, "Role", assumed_by=iam.ServicePrincipal("lambda.amazonaws.com"),
                             description="Hardened Duck: renews the engine's TLS certificate from the private CA")
        via_secrets_manager = {"StringEquals": {"kms:ViaService": f"secretsmanager.{Aws.REGION}.amazonaws.com"}}
        statements = [
            iam.PolicyStatement(actions=["secretsmanager:DescribeSecret", "secretsmanager:GetSecretValue",
                                         "secretsmanager:PutSecretValue", "secretsmanager:UpdateSecretVersionStage"],
                                resources=[secret_arn]),
            iam.PolicyStatement(actions=["acm-pca:IssueCertificate"], resources=[ca_arn],
                                conditions={"StringEquals": {"acm-pca:TemplateArn": END_ENTITY_TEMPLATE}}),
            iam.PolicyStatement(actions=["acm-pca:GetCertificate"], resources=[ca_arn]),
            iam.PolicyStatement(actions=["kms:Decrypt", "kms:GenerateDataKey"], resources=[data_key.key_arn],
                                conditions=via_secrets_manager),
            iam.PolicyStatement(actions=["logs:CreateLogStream", "logs:PutLogEvents"],
                                resources=[self.log_group.log_group_arn]),
            iam.PolicyStatement(actions=["ec2:CreateNetworkInterface", "ec2:DescribeNetworkInterfaces",
                                         "ec2:DeleteNetworkInterface", "ec2:AssignPrivateIpAddresses",
                                         "ec2:UnassignPrivateIpAddresses"], resources=["*"]),
        ]
        self.policy = iam.ManagedPolicy(self, "Policy", roles=[self.role], statements=statements,
                                        description="TLS certificate rotation: the one secret, the one CA")
        self.function = lambda_.Function(
            self, "Function",
            runtime=packaging.LAMBDA_RUNTIME, architecture=lambda_.Architecture.ARM_64,
            handler=ROTATION_HANDLER, code=code, layers=list(layers), role=self.role,
            vpc=vpc, vpc_subnets=subnets, security_groups=[lambda_sg],
            timeout=Duration.minutes(3),  # issuance takes seconds; the waiter gives up after two minutes
            memory_size=256, reserved_concurrent_executions=1,  # one rotation at a time
            log_group=self.log_group,
            environment={"HD_CERT_CA_ARN": ca_arn, "HD_CERT_VALIDITY_DAYS": str(VALIDITY_DAYS),
                         "POWERTOOLS_SERVICE_NAME": "hd-cert-rotation"},
            description="Renews the engine's TLS certificate in its secret from ACM Private CA",
        )
        self.function.node.add_dependency(self.policy)
        self.function.add_permission(
            "SecretsManagerInvokes", principal=iam.ServicePrincipal("secretsmanager.amazonaws.com"),
            source_account=Aws.ACCOUNT_ID)
        self.schedule = secretsmanager.CfnRotationSchedule(
            self, "Schedule", secret_id=secret_arn, rotation_lambda_arn=self.function.function_arn,
            rotation_rules=secretsmanager.CfnRotationSchedule.RotationRulesProperty(
                automatically_after_days=ROTATE_AFTER_DAYS))
        self.schedule.node.add_dependency(self.function)
        self._acknowledge()

    def _acknowledge(self) -> None:
        acknowledge(self.policy, "AwsSolutions-IAM5[Resource::*]",
                    "the EC2 network-interface actions a Lambda in a VPC needs have no resource-level permissions")
        acknowledge(self.function, "AwsSolutions-L1", _L1_REASON)
        for pack in ("HIPAA.Security", "NIST.800.53.R5"):
            acknowledge(self.function, f"{pack}-LambdaDLQ",
                        "Secrets Manager invokes rotation functions synchronously, retries a failed rotation and "
                        "reports it (the Lambda error alarm); a dead-letter queue applies to asynchronous calls only")
