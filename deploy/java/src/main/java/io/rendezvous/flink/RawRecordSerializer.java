package io.rendezvous.flink;

import org.apache.flink.connector.kafka.sink.KafkaRecordSerializationSchema;
import org.apache.flink.types.Row;
import org.apache.kafka.clients.producer.ProducerRecord;

/**
 * Writes a Python-built (topic, key, value) row as one Kafka record. The topic comes from
 * the row so that a result can go to the return address its request named.
 */
public class RawRecordSerializer implements KafkaRecordSerializationSchema<Row> {
    private static final long serialVersionUID = 1L;

    @Override
    public ProducerRecord<byte[], byte[]> serialize(Row row, KafkaSinkContext context, Long timestamp) {
        String topic = (String) row.getField(0);
        byte[] key = (byte[]) row.getField(1);
        byte[] value = (byte[]) row.getField(2);
        return new ProducerRecord<>(topic, null, timestamp, key, value);
    }
}
